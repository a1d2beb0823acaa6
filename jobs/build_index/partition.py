"""The partition step: each embeddings part is read once and its rows are routed to their shard
(``image_id % N``) as Arrow IPC record batches; each shard's task receives only its rows.

``route_part`` is the map side (one task per part, pyarrow reads, no s3a); the reduce side keeps
its rows in a ``shard_spill.ShardSpill`` on local disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cbir.errors import FailedPrecondition
from cbir.ids import shards_of
from jobs.build_index import embeddings_run
from jobs.build_index.shard_spill import Payload, chunk_rows


@dataclass(frozen=True)
class PartTask:
    """One embeddings part to route; small enough to ship to a Spark executor."""

    embeddings: str  # the run's URI (which filesystem to read with)
    path: str  # the part's path inside that filesystem
    index: int  # its position in the run: the order its rows are added in
    num_shards: int


def part_tasks(dataset: ds.Dataset, embeddings: str, num_shards: int) -> list[PartTask]:
    return [PartTask(embeddings, path, i, num_shards)
            for i, path in enumerate(sorted(dataset.files))]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def route_part(task: PartTask, _shared: object = None) -> Iterator[tuple[int, Payload]]:
    """(shard, ((part, row group, piece), IPC bytes of the shard's rows)) for every row group
    of the part, in pieces of at most one chunk: one row group in memory at a time."""
    fs, _ = embeddings_run.filesystem(task.embeddings)
    with fs.open_input_file(task.path) as source:
        parquet = pq.ParquetFile(source)
        # Every column but the shard's number: the metadata travels with its row, so the shard
        # writes its metadata.parquet without reading the run again.
        columns = [c for c in parquet.schema_arrow.names if c != "shard"]
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=columns)
            except (KeyError, pa.ArrowInvalid) as exc:
                raise FailedPrecondition(f"{task.path}: {exc}") from exc
            ids = table.column("image_id").to_numpy().astype(np.int64)
            shards = shards_of(ids, task.num_shards)
            step = chunk_rows(table.schema)
            for shard in np.unique(shards):
                rows = np.flatnonzero(shards == shard)
                # Pieces of one chunk: a reduce task never holds more than that of a payload.
                for piece, start in enumerate(range(0, len(rows), step)):
                    taken = table.take(pa.array(rows[start:start + step]))
                    yield int(shard), ((task.index, group, piece), _ipc(taken))
