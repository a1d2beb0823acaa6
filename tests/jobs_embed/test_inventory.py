"""Planning from an S3 Inventory report (synthesised on a real moto endpoint, CSV and Parquet)
yields exactly what listing the bucket yields; broken reports get clear errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument
from jobs.embed.inventory import inventory_objects
from jobs.embed.plan import list_objects

KEYS = {
    "photos/a.jpg": 10, "photos/sub/b c+d.jpg": 20, "photos/ü.png": 30, "photos/": 0,
    "other/x.jpg": 40, "photos/out/part.parquet": 50,
}


def _seed(bucket: str) -> None:
    client = storage.s3_client()
    for key, size in KEYS.items():
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)


def _csv_file(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
    return gzip.compress(text.getvalue().encode())


def _publish(bucket: str, fmt: str, data: bytes, schema: str, md5: str | None = None) -> str:
    client = storage.s3_client()
    client.put_object(Bucket=bucket, Key="inv/data/file-1", Body=data)
    manifest = {
        "sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}",
        "fileFormat": fmt, "fileSchema": schema,
        "files": [{"key": "inv/data/file-1", "size": len(data),
                   "MD5checksum": md5 or hashlib.md5(data).hexdigest()}],
    }
    client.put_object(Bucket=bucket, Key="inv/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/inv/manifest.json"


def _listing(bucket: str) -> list[tuple[str, int]]:
    refs = list_objects(f"s3://{bucket}/photos", exclude_prefix="photos/out/")
    return sorted((r.key, r.size) for r in refs)


def test_csv_inventory_equals_listing(bucket: str) -> None:
    _seed(bucket)
    rows = [[bucket, quote_plus(k), str(s), "2026-01-01T00:00:00.000Z", "true", "false"]
            for k, s in KEYS.items()]
    rows.append([bucket, "photos/old.jpg", "5", "2025-01-01T00:00:00.000Z", "false", "false"])
    rows.append([bucket, "photos/gone.jpg", "0", "2025-01-01T00:00:00.000Z", "true", "true"])
    uri = _publish(bucket, "CSV", _csv_file(rows),
                   "Bucket, Key, Size, LastModifiedDate, IsLatest, IsDeleteMarker")
    got = inventory_objects(uri, f"s3://{bucket}/photos", exclude_prefix="photos/out/")
    assert sorted((r.key, r.size) for r in got) == _listing(bucket)


def test_parquet_inventory_equals_listing(bucket: str) -> None:
    _seed(bucket)
    table = pa.table({"bucket": [bucket] * len(KEYS), "key": list(KEYS),
                      "size": pa.array(list(KEYS.values()), pa.int64())})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    uri = _publish(bucket, "Parquet", sink.getvalue(), "bucket, key, size")
    got = inventory_objects(uri, f"s3://{bucket}/photos", exclude_prefix="photos/out/")
    assert sorted((r.key, r.size) for r in got) == _listing(bucket)


def test_inventory_of_another_bucket_is_refused(bucket: str) -> None:
    uri = _publish(bucket, "CSV", _csv_file([]), "Bucket, Key, Size")
    with pytest.raises(InvalidArgument, match="describes bucket"):
        list(inventory_objects(uri, "s3://some-other-bucket/photos"))


def test_corrupt_inventory_file_is_refused(bucket: str) -> None:
    uri = _publish(bucket, "CSV", _csv_file([[bucket, "photos/a.jpg", "1"]]),
                   "Bucket, Key, Size", md5="0" * 32)
    with pytest.raises(FailedPrecondition, match="MD5"):
        list(inventory_objects(uri, f"s3://{bucket}/photos"))


def test_not_a_manifest_is_refused(bucket: str) -> None:
    storage.s3_client().put_object(Bucket=bucket, Key="inv/manifest.json", Body=b"{}")
    with pytest.raises(InvalidArgument, match="not an S3 Inventory manifest"):
        list(inventory_objects(f"s3://{bucket}/inv/manifest.json", f"s3://{bucket}/photos"))
