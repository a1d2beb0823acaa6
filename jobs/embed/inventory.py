"""Planning from an S3 Inventory report instead of listing the bucket.

Listing a billion-object bucket costs a million LIST calls from the driver; S3 Inventory writes
the same information daily as files. A report is a ``manifest.json`` (source bucket, file format,
the columns of ``fileSchema`` and the data ``files`` with their MD5) plus those files: gzipped
CSV without a header (keys URL-encoded) or Parquet (``bucket, key, size, ...`` columns). This
module yields the same ``ObjectRef``s as listing would, for the input prefix, so the rest of the
planner (done keys, tasks) does not know which one it got.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterator
from urllib.parse import unquote_plus

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument
from jobs.embed.config import ObjectRef


class InventoryFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str
    size: int = 0
    md5: str = Field("", alias="MD5checksum")


class InventoryManifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source_bucket: str = Field(alias="sourceBucket")
    destination_bucket: str = Field(alias="destinationBucket")
    file_format: str = Field(alias="fileFormat")
    file_schema: str = Field("", alias="fileSchema")
    files: list[InventoryFile]

    @property
    def bucket_of_files(self) -> str:
        # "arn:aws:s3:::bucket" in real reports; a plain name is accepted too.
        return self.destination_bucket.rsplit(":", 1)[-1]

    @property
    def columns(self) -> list[str]:
        return [c.strip() for c in self.file_schema.split(",") if c.strip()]


def read_manifest(manifest_uri: str) -> InventoryManifest:
    try:
        return InventoryManifest.model_validate_json(storage.read_bytes(manifest_uri))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(
            f"{manifest_uri} is not an S3 Inventory manifest.json: {where}: {first['msg']}"
        ) from None


def inventory_objects(
    manifest_uri: str, input_uri: str, exclude_prefix: str | None = None
) -> Iterator[ObjectRef]:
    """Every object of the report under the input prefix, like ``plan.list_objects``."""
    manifest = read_manifest(manifest_uri)
    loc = storage.parse_s3(input_uri)
    if manifest.source_bucket != loc.bucket:
        raise InvalidArgument(
            f"the inventory {manifest_uri} describes bucket {manifest.source_bucket!r}, "
            f"not the input bucket {loc.bucket!r}"
        )
    prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
    for entry in manifest.files:
        for key, size, etag in _rows(manifest, _fetch(manifest, entry)):
            if not key.startswith(prefix) or key.endswith("/"):
                continue
            if exclude_prefix and key.startswith(exclude_prefix):
                continue
            yield ObjectRef(key, size, etag)


def _fetch(manifest: InventoryManifest, entry: InventoryFile) -> bytes:
    uri = f"s3://{manifest.bucket_of_files}/{entry.key}"
    data = storage.read_bytes(uri)
    if entry.md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != entry.md5:
        raise FailedPrecondition(f"inventory file {uri} does not match its MD5 in manifest.json")
    return data


def _rows(manifest: InventoryManifest, data: bytes) -> Iterator[tuple[str, int, str]]:
    fmt = manifest.file_format.upper()
    if fmt == "CSV":
        yield from _csv_rows(manifest.columns, data)
    elif fmt == "PARQUET":
        yield from _parquet_rows(data)
    else:
        raise InvalidArgument(f"inventory format {manifest.file_format!r}: use CSV or Parquet")


def _csv_rows(columns: list[str], data: bytes) -> Iterator[tuple[str, int, str]]:
    where = {name: i for i, name in enumerate(columns)}
    if "Key" not in where or "Size" not in where:
        raise InvalidArgument("the inventory's fileSchema needs the Key and Size fields")
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8")
    for row in csv.reader(text):
        if _is_old_version(row, where):
            continue
        etag = row[where["ETag"]] if "ETag" in where else ""  # as listing gives it, no quotes
        yield unquote_plus(row[where["Key"]]), int(row[where["Size"]] or 0), etag


def _is_old_version(row: list[str], where: dict[str, int]) -> bool:
    """Reports that include all versions list delete markers and non-current versions too."""
    latest = where.get("IsLatest")
    marker = where.get("IsDeleteMarker")
    return (latest is not None and row[latest].lower() == "false") or (
        marker is not None and row[marker].lower() == "true"
    )


def _parquet_rows(data: bytes) -> Iterator[tuple[str, int, str]]:
    table = pq.read_table(io.BytesIO(data))
    names = set(table.column_names)
    if not {"key", "size"} <= names:
        raise InvalidArgument("the inventory's Parquet files need key and size columns")
    latest = table.column("is_latest").to_pylist() if "is_latest" in names else None
    marker = table.column("is_delete_marker").to_pylist() if "is_delete_marker" in names else None
    etags = table.column("e_tag").to_pylist() if "e_tag" in names else [""] * table.num_rows
    for i, (key, size) in enumerate(
        zip(table.column("key").to_pylist(), table.column("size").to_pylist(), strict=True)
    ):
        if (latest is not None and latest[i] is False) or (marker is not None and marker[i]):
            continue
        yield str(key), int(size or 0), str(etags[i] or "")
