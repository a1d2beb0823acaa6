"""The on-disk layout of a built index, shared by the index build (writer) and the shard server
(reader) so neither imports the other:

    <index>/manifest.json                   IndexManifest, written last
    <index>/shard=NNN/index.faiss           the shard's Faiss index (ids = global image ids)
    <index>/shard=NNN/ids.parquet           image_id int64 -> key string, sorted by image_id
    <index>/shard=NNN/metadata.parquet      image_id + the filterable metadata columns, the
                                            same rows in the same order as ids.parquet
                                            (optional: older builds have none; docs/filters.md)
    <index>/shard=NNN/manifest.json         ShardManifest (checksum = sha256 of index.faiss)
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from cbir import storage
from cbir.schema import INDEX_MANIFEST

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
METADATA_FILE = "metadata.parquet"

IDS_SCHEMA = pa.schema(
    [pa.field("image_id", pa.int64(), nullable=False), pa.field("key", pa.string(), nullable=False)]
)


def shard_dir_name(shard: int) -> str:
    return f"shard={shard:03d}"


def shard_uri(index_uri: str, shard: int) -> str:
    return storage.join(index_uri, shard_dir_name(shard))


def shard_file(index_uri: str, shard: int, name: str) -> str:
    return storage.join(shard_uri(index_uri, shard), name)


def index_manifest_uri(index_uri: str) -> str:
    return storage.join(index_uri, INDEX_MANIFEST)


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
