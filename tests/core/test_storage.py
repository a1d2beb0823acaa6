from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cbir import storage
from cbir.errors import InvalidArgument, NotFound


def test_parse_s3() -> None:
    loc = storage.parse_s3("s3://bkt/a/b.jpg")
    assert (loc.bucket, loc.key, loc.uri) == ("bkt", "a/b.jpg", "s3://bkt/a/b.jpg")
    with pytest.raises(InvalidArgument):
        storage.parse_s3("s3:///nobucket")
    with pytest.raises(InvalidArgument):
        storage.parse_s3("/local/path")


def test_local_roundtrip_is_atomic_and_lists(tmp_path: Path) -> None:
    target = str(tmp_path / "d" / "x.bin")
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert storage.exists(target)
    assert list(storage.list_names(str(tmp_path))) == ["d/x.bin"]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp files left behind
    with pytest.raises(NotFound):
        storage.read_bytes(str(tmp_path / "missing"))


def test_s3_roundtrip_through_real_endpoint(bucket: str) -> None:
    base = f"s3://{bucket}/prefix"
    for i in range(3):
        storage.write_bytes(storage.join(base, f"k{i}.bin"), bytes([i]))
    assert sorted(storage.list_names(base)) == ["k0.bin", "k1.bin", "k2.bin"]
    assert storage.read_bytes(f"{base}/k2.bin") == b"\x02"
    assert storage.exists(f"{base}/k1.bin") and not storage.exists(f"{base}/nope")
    with pytest.raises(NotFound):
        storage.read_bytes(f"{base}/nope")


def test_pyarrow_parquet_on_s3(bucket: str) -> None:
    fs, path = storage.filesystem(f"s3://{bucket}/t/part.parquet")
    table = pa.table({"a": [1, 2, 3]})
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_s3_client_is_shared_per_endpoint(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = storage.s3_client()
    assert storage.s3_client() is first  # built once, not per call
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    other = storage.s3_client()
    assert other is not first and other.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert storage.s3_client() is first
