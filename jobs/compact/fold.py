"""Folding the write-ahead log into an embeddings snapshot (the pure part of compaction).

The snapshot is the base run with every row of an id the log wrote removed, plus one row per id
whose last write is an upsert: the state a replica reaches by applying the same entries to the
same base (``shard_server.segments``: an upsert tombstones the base row and adds a delta row, a
delete tombstones it and drops the delta row; last write per id wins in log order). It keeps the
base run's schema and Parquet metadata, so the build reads it like any backfill run.

Each base part is filtered by one task (``jobs.engines.run``: sequential or Spark), which ships
only the sorted array of touched ids; the log's final upserts are written by the driver, which
read the log anyway.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import storage
from cbir.errors import FailedPrecondition
from cbir.ids import shards_of
from cbir.live_metadata import cast_or_none, fits_or_none
from cbir.schema import ATTRIBUTES
from cbir.wal import Delete, LogEntry, Operation, Upsert
from jobs.build_index import embeddings_run

UPSERT_PART_ROWS = 65_536  # rows per Parquet part of log upserts (a backfill part's order)


def last_writes(entries: Iterable[LogEntry]) -> dict[int, Operation]:
    """The last operation per image id, entries taken in the order given (log order)."""
    final: dict[int, Operation] = {}
    for entry in entries:
        for op in entry.operations:
            final[op.image_id] = op
    return final


@dataclass(frozen=True)
class Changes:
    """What the log does to the base: the ids whose base rows go, the rows that come."""

    touched: np.ndarray  # int64, sorted, unique: every id the log upserted or deleted
    upserts: tuple[Upsert, ...]  # the ids whose last write is an upsert, by id
    deletes: int  # ids whose last write is a delete

    @staticmethod
    def of(final: Mapping[int, Operation]) -> Changes:
        touched = np.array(sorted(final), dtype=np.int64)
        upserts = tuple(op for _, op in sorted(final.items()) if isinstance(op, Upsert))
        deletes = sum(isinstance(op, Delete) for op in final.values())
        return Changes(touched, upserts, deletes)


@dataclass(frozen=True)
class FoldTask:
    """One base part to filter; small enough to ship to a Spark executor."""

    base: str  # the base run's URI (which filesystem to read with)
    path: str  # the part's path inside that filesystem
    output: str  # the folded part's URI in the snapshot

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class FoldedPart:
    name: str
    rows: int  # rows in the folded part
    dropped: int  # base rows the log replaced or deleted (0 for a reused part: not counted)
    reused: bool = False


def fold_part(task: FoldTask, touched: np.ndarray) -> FoldedPart:
    """The base part without the rows of ``touched`` ids, written as one object (the commit).
    A part already in the snapshot (a re-run after a crash) is kept: same input, same bytes."""
    if storage.exists(task.output):
        return FoldedPart(task.name, _num_rows(task.output), 0, reused=True)
    fs, _ = embeddings_run.filesystem(task.base)
    rows_in = rows_out = 0
    sink = pa.BufferOutputStream()
    with fs.open_input_file(task.path) as source:
        parquet = pq.ParquetFile(source)
        with pq.ParquetWriter(sink, parquet.schema_arrow, compression="zstd") as writer:
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                ids = table.column("image_id").to_numpy().astype(np.int64)
                keep = ~np.isin(ids, touched)
                writer.write_table(table.filter(pa.array(keep)))
                rows_in += len(ids)
                rows_out += int(keep.sum())
    storage.write_bytes(task.output, sink.getvalue().to_pybytes())
    return FoldedPart(task.name, rows_out, rows_in - rows_out)


def _num_rows(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as fh:
        return int(pq.ParquetFile(fh).metadata.num_rows)


# The run's columns for what a log upsert knows of its object (``cbir.wal.ObjectInfo``).
INFO_TO_RUN = {"size": "bytes", "width": "width", "height": "height",
               "content_type": "content_type", "last_modified": "last_modified"}
BUILT_IN = frozenset({"image_id", "key", "shard", "embedding", ATTRIBUTES,
                      *INFO_TO_RUN.values()})


def _fitting(values: list[object], kind: pa.DataType) -> pa.Array:
    """``values`` as an array of ``kind``; one that does not fit is null (a replica stores null
    for it too: cbir.live_metadata)."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([fits_or_none(v, kind) for v in values], type=kind)


def _metadata_columns(upserts: Sequence[Upsert], schema: pa.Schema) -> dict[str, pa.Array]:
    """The object metadata and attributes of log upserts, typed by the rule a replica applies
    to its delta (docs/live_updates.md, "Metadata of upserts"), so a filter answers the same
    before and after compaction: the object's columns from its info; an attribute that names a
    typed (sidecar) column of the run fills it, cast; every other attribute goes to the
    ``attributes`` map, which the build expands into string columns like a backfilled row's."""
    columns = {column: _fitting([getattr(u.info, info) for u in upserts],
                                schema.field(column).type)
               for info, column in INFO_TO_RUN.items() if column in schema.names}
    typed = [f for f in schema if f.name not in BUILT_IN]
    for f in typed:
        columns[f.name] = _fitting([cast_or_none(u.attributes.get(f.name), f.type)
                                    for u in upserts], f.type)
    if ATTRIBUTES in schema.names:  # runs written before the metadata columns have none
        taken = {f.name for f in typed}
        columns[ATTRIBUTES] = pa.array(
            [sorted((k, v) for k, v in u.attributes.items() if k not in taken)
             for u in upserts], schema.field(ATTRIBUTES).type)
    return columns


def _known_columns(upserts: Sequence[Upsert], dim: int, num_shards: int,
                   schema: pa.Schema) -> dict[str, pa.Array]:
    """The columns a log upsert fills; every other column of the run is null for its row."""
    ids = np.array([u.image_id for u in upserts], dtype=np.int64)
    vectors = (np.stack([u.vector for u in upserts]) if upserts
               else np.zeros((0, dim), np.float32)).astype(np.float32, copy=False)
    return {
        "image_id": pa.array(ids, pa.int64()),
        "key": pa.array([u.key for u in upserts], pa.string()),
        "shard": pa.array(shards_of(ids, num_shards), pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1),
                                                                pa.float32()), dim),
        **_metadata_columns(upserts, schema),
    }


def upserts_table(upserts: Sequence[Upsert], schema: pa.Schema, num_shards: int) -> pa.Table:
    """The log's final upserts as rows of the base run's schema (and its Parquet metadata)."""
    dim = schema.field("embedding").type.list_size
    bad = next((u for u in upserts if u.vector.shape != (dim,)), None)
    if bad is not None:
        raise FailedPrecondition(f"log upsert of image {bad.image_id} has a vector of shape "
                                 f"{bad.vector.shape}; the index holds {dim}-d vectors")
    known = _known_columns(upserts, dim, num_shards, schema)
    arrays = [known[f.name] if f.name in known else pa.nulls(len(upserts), f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_upserts(upserts: Sequence[Upsert], schema: pa.Schema, num_shards: int,
                  snapshot: str, tag: str) -> dict[str, int]:
    """The final upserts as ``part-log-<tag>-NNNNN.parquet`` parts of the snapshot: name ->
    rows. ``tag`` names this compaction: the base may be an earlier snapshot whose own log
    parts are copied under their names, which this one's must not overwrite."""
    written: dict[str, int] = {}
    for start in range(0, len(upserts), UPSERT_PART_ROWS):
        chunk = upserts[start:start + UPSERT_PART_ROWS]
        name = f"part-log-{tag}-{start // UPSERT_PART_ROWS:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(upserts_table(chunk, schema, num_shards), sink, compression="zstd")
        storage.write_bytes(storage.join(snapshot, name), sink.getvalue().to_pybytes())
        written[name] = len(chunk)
    return written
