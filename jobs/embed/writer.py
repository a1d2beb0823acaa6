"""Parquet parts: one task -> one embeddings part (the commit) and, before it, an errors part.

A part is serialised in memory and written with ``storage.write_bytes``: temp file + rename
locally, one PUT on S3, so a reader never sees half a part and a crashed task leaves nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import ids, schema, storage
from jobs.embed import sidecar
from jobs.embed.fetch import ObjectMeta


@dataclass
class PartRows:
    """Rows accumulated by one task."""

    keys: list[str] = field(default_factory=list)  # full s3:// URIs
    vectors: list[np.ndarray] = field(default_factory=list)  # (n, dim) blocks
    sizes: list[tuple[int, int]] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    last_modified: list[object] = field(default_factory=list)  # datetime | None
    content_types: list[str | None] = field(default_factory=list)
    attributes: list[list[tuple[str, str]]] = field(default_factory=list)

    def add_meta(self, meta: ObjectMeta | None) -> None:
        meta = meta or ObjectMeta()
        self.last_modified.append(meta.last_modified)
        self.content_types.append(meta.content_type)
        self.attributes.append(sorted(meta.attributes.items()))


@dataclass
class ErrorRows:
    keys: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    nbytes: list[int | None] = field(default_factory=list)

    def add(self, key: str, reason: str, detail: str, nbytes: int | None) -> None:
        self.keys.append(key)
        self.reasons.append(reason)
        self.details.append(detail)
        self.nbytes.append(nbytes)


def part_uri(output: str, part: str) -> str:
    return storage.join(output, part)


def errors_uri(output: str, part: str) -> str:
    return storage.join(output, schema.ERRORS_DIR, part)


def _metadata_columns(rows: PartRows, attributes: str | None, bucket: str) -> list[pa.Array]:
    """Object metadata, then the sidecar's typed columns (schema.backfill_schema's order)."""
    fields = {f.name: f.type for f in schema.OBJECT_METADATA_FIELDS}
    while len(rows.last_modified) < len(rows.keys):  # rows added without metadata
        rows.add_meta(None)
    out = [
        pa.array(rows.last_modified, fields["last_modified"]),
        pa.array(rows.content_types, fields["content_type"]),
        pa.array(rows.attributes, fields[schema.ATTRIBUTES]),
    ]
    if attributes:
        out += sidecar.join(attributes, bucket, rows.keys)
    return out


def embeddings_table(
    rows: PartRows, dim: int, model: str, version: str, num_shards: int,
    attributes: str | None = None, bucket: str = "",
) -> pa.Table:
    sch = schema.backfill_schema(dim, model, version, sidecar.sidecar_schema(attributes))
    vectors = (np.concatenate(rows.vectors) if rows.vectors
               else np.zeros((0, dim), dtype=np.float32)).astype(np.float32, copy=False)
    image_ids = np.array([ids.image_id(k) for k in rows.keys], dtype=np.int64)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns: Sequence[pa.Array] = [
        pa.array(image_ids, type=pa.int64()),
        pa.array(rows.keys, type=pa.string()),
        pa.array(ids.shards_of(image_ids, num_shards), type=pa.int32()),
        pa.FixedSizeListArray.from_arrays(flat, dim),
        pa.array([w for w, _ in rows.sizes], type=pa.int32()),
        pa.array([h for _, h in rows.sizes], type=pa.int32()),
        pa.array(rows.nbytes, type=pa.int64()),
        *_metadata_columns(rows, attributes, bucket),
    ]
    return pa.Table.from_arrays(list(columns), schema=sch)


def errors_table(rows: ErrorRows) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(rows.keys, pa.string()), pa.array(rows.reasons, pa.string()),
         pa.array(rows.details, pa.string()), pa.array(rows.nbytes, pa.int64())],
        schema=schema.ERRORS_SCHEMA,
    )


def write_table(uri: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    # Vectors barely compress; zstd still shrinks keys and metadata at little cost.
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def count_rows(uri: str) -> int:
    """Rows of a committed part, from its footer alone."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as fh:
        return int(pq.ParquetFile(fh).metadata.num_rows)


def reason_counts(uri: str) -> dict[str, int]:
    """How many rows of an errors part carry each reason."""
    fs, path = storage.filesystem(uri)
    reasons = pq.read_table(path, columns=["reason"], filesystem=fs).column("reason")
    return dict(Counter(reasons.to_pylist()))
