"""``--attributes URI``: a sidecar table of typed per-image attributes joined by key.

The table (Parquet, or CSV with a header; local path or s3://) has a string ``key`` column -
the object key inside the input bucket, or the full ``s3://bucket/key`` URI - and any other
columns, which are copied with their types (Parquet's, or pyarrow's CSV type inference) into
every embeddings part and from there into each shard's filterable metadata (docs/filters.md).
Each worker process reads the table once.
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cbir import schema, storage
from cbir.errors import InvalidArgument, NotFound

MAX_ROWS = 50_000_000
RESERVED = frozenset(n for n in schema.backfill_schema(1).names) | {"size"}


def _read(uri: str) -> pa.Table:
    if not storage.exists(uri):
        raise NotFound(f"--attributes: {uri} does not exist")
    fs, path = storage.filesystem(uri)
    try:
        if uri.lower().endswith(".csv"):
            with fs.open_input_stream(path) as fh:
                return pacsv.read_csv(fh)
        return pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"--attributes: cannot read {uri}: {exc}") from None


def check_sidecar(table: pa.Table, uri: str) -> pa.Table:
    """Refuse what would make the join ambiguous or shadow a built-in column."""
    if "key" not in table.column_names:
        raise InvalidArgument(f"--attributes: {uri} has no 'key' column")
    if not pa.types.is_string(table.schema.field("key").type):
        raise InvalidArgument(f"--attributes: {uri}: 'key' must be a string column")
    if table.num_rows > MAX_ROWS:
        raise InvalidArgument(f"--attributes: {uri} has more than {MAX_ROWS} rows")
    for name in table.column_names:
        if name != "key" and name in RESERVED:
            raise InvalidArgument(f"--attributes: column {name!r} is a built-in column")
    keys = table.column("key")
    if keys.null_count or len(keys.unique()) != len(keys):
        raise InvalidArgument(f"--attributes: {uri}: keys must be unique and not null")
    return table.combine_chunks()


@lru_cache(maxsize=2)
def load_sidecar(uri: str) -> pa.Table:
    return check_sidecar(_read(uri), uri)


def sidecar_schema(uri: str | None) -> pa.Schema | None:
    """The typed columns the sidecar adds (without ``key``), or None without one."""
    if not uri:
        return None
    table = load_sidecar(uri)
    return pa.schema([f for f in table.schema if f.name != "key"])


@lru_cache(maxsize=2)
def _row_of(uri: str, bucket: str) -> dict[str, int]:
    """Full object URI -> sidecar row (built once per worker process)."""
    prefix = f"s3://{bucket}/"
    return {key if key.startswith("s3://") else prefix + key: row
            for row, key in enumerate(load_sidecar(uri).column("key").to_pylist())}


def join(uri: str, bucket: str, uris: list[str]) -> list[pa.Array]:
    """The sidecar's columns for ``uris`` (s3://bucket/key), null where a key has no row."""
    table = load_sidecar(uri)
    row_of = _row_of(uri, bucket)
    rows = pa.array([row_of.get(u) for u in uris], pa.int64())
    return [table.column(f.name).take(rows).combine_chunks()
            for f in table.schema if f.name != "key"]
