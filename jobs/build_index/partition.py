"""The partition step: each embeddings part is read once and its rows are routed to their shard
(``image_id % N``) as Arrow IPC record batches; each shard's task receives only its rows.

``route_part`` is the map side (one task per part, pyarrow reads, no s3a); ``ShardSpill`` is the
reduce side's local copy of one shard's rows (an Arrow IPC file on local disk), read back in a
fixed (part, row group) order so every engine adds the same rows in the same order and writes
byte-identical indexes, whatever order a Spark shuffle delivered them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cbir.errors import FailedPrecondition
from cbir.ids import shards_of
from jobs.build_index import embeddings_run

OrderKey = tuple[int, int]  # (part index, row group)
Payload = tuple[OrderKey, bytes]  # one part's row group, one shard's rows, as Arrow IPC


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
    """(shard, ((part, row group), IPC bytes of the shard's rows)) for every row group of the
    part: one row group in memory at a time."""
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
            for shard in np.unique(shards):
                rows = table.take(pa.array(np.flatnonzero(shards == shard)))
                yield int(shard), ((task.index, group), _ipc(rows))


class ShardSpill:
    """One shard's rows in a local Arrow IPC file, read back batch by batch in order."""

    def __init__(self, path: Path, order: list[int]) -> None:
        self.path = path
        self.order = order  # batch numbers in the file, in (part, row group) order

    @classmethod
    def collect(cls, payloads: Iterable[Payload], path: Path) -> ShardSpill:
        writer: pa.ipc.RecordBatchFileWriter | None = None
        placed: list[tuple[OrderKey, int]] = []
        try:
            for key, data in payloads:
                table = pa.ipc.open_stream(data).read_all()
                if writer is None:
                    writer = pa.ipc.new_file(str(path), table.schema)
                for batch in table.to_batches():
                    placed.append((key, len(placed)))
                    writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()
        return cls(path, [n for _, n in sorted(placed)])

    def batches(self) -> Iterator[pa.RecordBatch]:
        if not self.order:
            return
        with pa.OSFile(str(self.path)) as source:  # read, not mapped: RSS holds one batch
            reader = pa.ipc.open_file(source)
            for n in self.order:
                yield reader.get_batch(n)

    def ids_and_keys(self) -> tuple[np.ndarray, pa.ChunkedArray]:
        """Every row's id and key, in order (no vectors: ~16 + key bytes per row)."""
        ids: list[np.ndarray] = [np.empty(0, np.int64)]
        keys: list[pa.Array] = []
        for batch in self.batches():
            ids.append(batch.column("image_id").to_numpy().astype(np.int64))
            # A copy: a column read from an IPC file is a slice of its batch's one body buffer,
            # so keeping the column itself would keep every batch's vectors alive.
            keys.append(pa.concat_arrays([batch.column("key")]))
        return np.concatenate(ids), pa.chunked_array(keys, pa.string())

    def columns_of_kept(self, keep: np.ndarray, columns: list[str]) -> pa.Table | None:
        """The kept rows' ``columns`` (no vectors), in order; None for an empty spill."""
        parts: list[pa.Table] = []
        offset = 0
        for batch in self.batches():
            mask = pa.array(keep[offset:offset + batch.num_rows])
            offset += batch.num_rows
            table = pa.Table.from_batches([batch]).select(columns)
            parts.append(table.filter(mask))  # filter copies: the batch's body is not kept
        return pa.concat_tables(parts) if parts else None

    def schema_names(self) -> list[str]:
        if not self.order:
            return []
        with pa.OSFile(str(self.path)) as source:
            return list(pa.ipc.open_file(source).schema.names)

    def chunks(self, keep: np.ndarray, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of the kept rows, one batch at a time."""
        offset = 0
        for batch in self.batches():
            mask = keep[offset:offset + batch.num_rows]
            offset += batch.num_rows
            if not mask.any():
                continue
            ids = batch.column("image_id").to_numpy().astype(np.int64)[mask]
            flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            vectors = np.ascontiguousarray(flat.reshape(-1, dim)[mask], dtype=np.float32)
            yield ids, vectors
