"""The per-shard metadata table a shard server filters on (docs/filters.md).

``shard=NNN/metadata.parquet`` holds ``image_id`` plus every metadata column of the embeddings
run (everything but the key, the vector and the shard number: width, height, size,
last_modified, content_type, sidecar columns with their own types) and one string column per
attribute name found in the run's ``attributes`` map (S3 user metadata, ``tag_*`` tags), in the
same row order as ``ids.parquet``. The attribute names are collected once over the whole run by
the driver, so every shard has the same columns and a filter valid on one is valid on all. The
key stays in ``ids.parquet`` only; the shard server joins the two.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cbir.errors import FailedPrecondition
from cbir.schema import ATTRIBUTES

NOT_METADATA = frozenset({"key", "embedding", "shard"})
RENAMED = {"bytes": "size"}  # the object's size, under the name the filter docs use
MAX_ATTRIBUTE_NAMES = 256  # columns, not values: a run with more is probably keyed by id


def metadata_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name not in NOT_METADATA]


def schema_bytes(schema: pa.Schema) -> bytes:
    """The run's metadata columns (with ``image_id``) as an Arrow IPC schema, for the tasks."""
    wanted = pa.schema([schema.field(name) for name in metadata_columns(schema)])
    return wanted.serialize().to_pybytes()


def empty_rows(schema: bytes) -> pa.Table:
    """No rows, the run's metadata columns: an empty shard still has every column, so a filter
    valid on one shard is valid on all."""
    if not schema:
        return pa.table({"image_id": pa.array([], pa.int64())})
    return pa.ipc.read_schema(pa.py_buffer(schema)).empty_table()


def attribute_names(dataset: ds.Dataset) -> tuple[str, ...]:
    """Every attribute name in the run (driver side), sorted."""
    if ATTRIBUTES not in dataset.schema.names:
        return ()
    names: set[str] = set()
    for batch in dataset.to_batches(columns=[ATTRIBUTES]):
        keys = batch.column(ATTRIBUTES).keys  # every entry's name (MapArray.keys)
        names.update(k for k in pc.unique(keys).to_pylist() if k)
        if len(names) > MAX_ATTRIBUTE_NAMES:
            raise FailedPrecondition(
                f"more than {MAX_ATTRIBUTE_NAMES} distinct attribute names in the run")
    return tuple(sorted(names))


def _expand(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """The attributes map -> one string column per name; ``bytes`` -> ``size``."""
    table = table.rename_columns([RENAMED.get(n, n) for n in table.column_names])
    if ATTRIBUTES not in table.column_names:
        return table
    attrs = table.column(ATTRIBUTES).combine_chunks()
    table = table.drop_columns([ATTRIBUTES])
    for name in names:
        # A name that a built-in or sidecar column already uses gets a prefix.
        column = f"attr_{name}" if name in table.column_names else name
        table = table.append_column(pa.field(column, pa.string()),
                                    pc.map_lookup(attrs, name, "first"))
    return table


def from_rows(table: pa.Table, attributes: tuple[str, ...] = ()) -> pa.Table:
    """A shard's metadata from its own routed (de-duplicated) rows, in id order."""
    return _expand(table.sort_by("image_id").combine_chunks(), attributes)
