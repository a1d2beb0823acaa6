"""Data contracts shared by the jobs and the servers (docs/architecture.md, "Data contracts").

Arrow schemas for the embeddings and errors tables, and pydantic models for the manifests so a
malformed manifest is rejected with a clear message instead of a KeyError deep in a server.
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cbir import storage
from cbir.errors import FailedPrecondition, NotFound

EMBED_MANIFEST = "_MANIFEST.json"
ERRORS_DIR = "_errors"
INDEX_MANIFEST = "manifest.json"
SCHEMA_VERSION = 1

# Parquet key-value metadata carried by every embeddings part.
META_MODEL = b"cbir.model"
META_MODEL_VERSION = b"cbir.model_version"
META_DIM = b"cbir.dim"

Metric = Literal["ip", "l2"]


def embeddings_schema(dim: int, model: str = "", model_version: str = "") -> pa.Schema:
    fields = [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
    ]
    meta = {META_MODEL: model.encode(), META_MODEL_VERSION: model_version.encode(),
            META_DIM: str(dim).encode()}
    return pa.schema(fields, metadata=meta)


# Per-object metadata the backfill keeps after the required columns (README, data contracts;
# docs/filters.md). Optional for readers: runs written before these existed lack them.
ATTRIBUTES = "attributes"
OBJECT_METADATA_FIELDS = (
    pa.field("last_modified", pa.timestamp("ms", tz="UTC")),
    pa.field("content_type", pa.string()),
    # S3 user metadata (x-amz-meta-NAME -> NAME) and, with --with-tags, tags (-> tag_NAME).
    pa.field(ATTRIBUTES, pa.map_(pa.string(), pa.string())),
)


def backfill_schema(dim: int, model: str = "", model_version: str = "",
                    sidecar: pa.Schema | None = None) -> pa.Schema:
    """What the backfill writes: the required columns, the object metadata, then the typed
    columns of the ``--attributes`` sidecar table (joined by key)."""
    base = embeddings_schema(dim, model, model_version)
    fields = [*base, *OBJECT_METADATA_FIELDS, *(sidecar or [])]
    return pa.schema(fields, metadata=base.metadata)


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("bytes", pa.int64()),
    ]
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()


M = TypeVar("M", bound=_Model)


class EmbedManifest(_Model):
    """``<embeddings>/_MANIFEST.json``: written last; nothing downstream reads a run without it."""

    schema_version: int = SCHEMA_VERSION
    model: str
    model_version: str
    dim: int = Field(gt=0)
    num_images: int = Field(ge=0)
    num_errors: int = Field(ge=0)
    input: str = ""
    parts: list[str] = Field(default_factory=list)
    error_parts: list[str] = Field(default_factory=list)


class ShardManifest(_Model):
    """``<index>/shard=NNN/manifest.json``."""

    schema_version: int = SCHEMA_VERSION
    shard: int = Field(ge=0)
    num_shards: int = Field(gt=0)
    count: int = Field(ge=0)
    dim: int = Field(gt=0)
    metric: Metric = "ip"
    factory: str
    search_params: dict[str, int] = Field(default_factory=dict)
    model: str = ""
    model_version: str
    index_version: str
    checksum: str  # sha256 of index.faiss
    recall_at_10: float | None = None
    # The live index: the write-ahead log position folded into this version (compaction);
    # replicas apply only later entries on top of it.
    wal_seq: int = Field(default=0, ge=0)


class IndexManifest(_Model):
    """``<index>/manifest.json``: the top level, written after every shard."""

    schema_version: int = SCHEMA_VERSION
    index_version: str
    num_shards: int = Field(gt=0)
    count: int = Field(ge=0)
    dim: int = Field(gt=0)
    metric: Metric = "ip"
    factory: str
    search_params: dict[str, int] = Field(default_factory=dict)
    model: str = ""
    model_version: str
    embeddings: str = ""
    recall_at_10: float | None = None
    shards: list[str] = Field(default_factory=list)


def _problems(exc: ValidationError, model: type[_Model]) -> str:
    """What is wrong, naming only the model's own fields (never a value or an unknown key)."""
    out = []
    for e in exc.errors(include_input=False, include_url=False)[:5]:
        loc = e["loc"][0] if e["loc"] else None
        where = loc if isinstance(loc, str) and loc in model.model_fields else "document"
        out.append(f"{where}: {e['msg']}")
    return "; ".join(out)


def read_manifest(uri: str, model: type[M]) -> M:
    """Read and validate a manifest; missing or malformed ones raise typed errors."""
    try:
        raw = storage.read_bytes(uri)
    except NotFound as exc:
        raise NotFound(f"manifest not found: {uri} (was the job finished?)") from exc
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        # Field names and reasons only: pydantic's own text quotes the input, and the object
        # may be anything the caller pointed at (a config file with a password in it).
        raise FailedPrecondition(f"invalid manifest {uri}: {_problems(exc, model)}") from None


def write_manifest(uri: str, manifest: _Model) -> None:
    storage.write_bytes(uri, manifest.to_json())
