"""One shard's routed rows on the reduce task's local disk, read back in bounded pieces.

The rows arrive as Arrow IPC payloads in any order (a Spark shuffle, the sequential engine's
spill). ``ShardSpill.collect`` writes them to two local Arrow IPC files, cut into batches of at
most ``CHUNK_BYTES`` of vectors:

- ``vectors.arrow``: ``image_id`` + ``embedding``, read chunk by chunk to add and to tune;
- ``rows.arrow``: every other column (key, metadata, attributes), read for de-duplication
  and for the sorted ``ids.parquet`` / ``metadata.parquet``.

Both are read in a fixed (part, row group, piece) order, so every engine adds the same rows in the
same order and writes byte-identical indexes. ``sorted_rows`` hands the kept rows back in
``image_id`` order one bucket at a time (an external bucket sort by id range: one scatter pass
to per-bucket files, then each bucket sorted alone), so writing the sorted tables holds one
bucket, whatever the shard's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa

OrderKey = tuple[int, int, int]  # (part index, row group, piece)
Payload = tuple[OrderKey, bytes]  # a piece of one part's row group's rows of one shard, as IPC

# One chunk of vectors in memory at a time: 1 MiB is 2,048 rows of 128-d (256 rows at least),
# enough for Faiss to add at full speed, small beside any index worth sharding.
CHUNK_BYTES = 1 << 20
MIN_CHUNK_ROWS = 256
# One bucket of sorted rows (keys, metadata) in memory while the sorted tables are written.
BUCKET_BYTES = 1 << 20
MIN_BUCKET_ROWS = 1024
# Bucket files open at once while scattering: well under a usual `ulimit -n` of 1024. A shard
# of more rows than this many buckets of BUCKET_BYTES gets larger buckets (31M rows: ~6 MB).
MAX_BUCKETS = 256
VECTOR_COLUMNS = ("image_id", "embedding")


def chunk_rows(schema: pa.Schema) -> int:
    """Rows per spilled batch: ``CHUNK_BYTES`` of float32 vectors."""
    dim = schema.field("embedding").type.list_size
    return max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * max(dim, 1)))


def _batches(path: Path, order: list[int]) -> Iterator[pa.RecordBatch]:
    if not order:
        return
    with pa.OSFile(str(path)) as source:  # read, not mapped: RSS holds one batch
        reader = pa.ipc.open_file(source)
        for n in order:
            yield reader.get_batch(n)


class _Writers:
    """The two spill files, opened on the first payload's schema."""

    def __init__(self, root: Path, schema: pa.Schema, stack: ExitStack) -> None:
        self.rows_columns = [n for n in schema.names if n != "embedding"]
        self.vectors = stack.enter_context(pa.ipc.new_file(
            str(root / "vectors.arrow"), pa.schema([schema.field(c) for c in VECTOR_COLUMNS])))
        self.rows = stack.enter_context(pa.ipc.new_file(
            str(root / "rows.arrow"), pa.schema([schema.field(c) for c in self.rows_columns])))
        self.step = chunk_rows(schema)

    def write(self, table: pa.Table) -> int:
        """``table`` as batches of at most ``step`` rows; returns how many."""
        written = 0
        for start in range(0, table.num_rows, self.step):
            part = table.slice(start, self.step).combine_chunks()  # exactly one batch each
            self.vectors.write_table(part.select(list(VECTOR_COLUMNS)))
            self.rows.write_table(part.select(self.rows_columns))
            written += 1
        return written


class ShardSpill:
    """One shard's rows in two local Arrow IPC files (vectors; everything else)."""

    def __init__(self, root: Path, order: list[int], schema: pa.Schema | None) -> None:
        self.root = root
        self.order = order  # batch numbers in the files, in (part, row group, piece) order
        self.schema = schema  # of the routed rows; None when no row arrived

    @classmethod
    def collect(cls, payloads: Iterable[Payload], root: Path) -> ShardSpill:
        placed: list[tuple[OrderKey, int]] = []
        schema: pa.Schema | None = None
        with ExitStack() as stack:
            writers: _Writers | None = None
            for key, data in payloads:
                table = pa.ipc.open_stream(data).read_all()
                if not table.num_rows:
                    continue
                if writers is None:
                    schema = table.schema
                    writers = _Writers(root, schema, stack)
                for _ in range(writers.write(table)):
                    placed.append((key, len(placed)))
        return cls(root, [n for _, n in sorted(placed)], schema)

    @property
    def rows_path(self) -> Path:
        return self.root / "rows.arrow"

    def rows(self) -> Iterator[pa.RecordBatch]:
        """Every row but its vector, batch by batch, in order."""
        return _batches(self.rows_path, self.order)

    def ids(self) -> np.ndarray:
        """Every row's id, in order (8 bytes per row)."""
        ids = [batch.column("image_id").to_numpy().astype(np.int64) for batch in self.rows()]
        return np.concatenate([np.empty(0, np.int64), *ids])

    def keys_at(self, positions: np.ndarray) -> dict[int, str]:
        """The keys of the rows at ``positions`` (rows in order): one pass, these keys only."""
        wanted = np.unique(positions)
        found: dict[int, str] = {}
        offset = 0
        for batch in self.rows():
            local = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)] - offset
            keys = batch.column("key").take(pa.array(local)).to_pylist()
            found.update(zip((local + offset).tolist(), keys, strict=True))
            offset += batch.num_rows
        return found

    def chunks(self, keep: np.ndarray, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of the kept rows, one chunk at a time."""
        offset = 0
        for batch in _batches(self.root / "vectors.arrow", self.order):
            mask = keep[offset:offset + batch.num_rows]
            offset += batch.num_rows
            if not mask.any():
                continue
            ids = batch.column("image_id").to_numpy().astype(np.int64)
            flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            vectors = flat.reshape(-1, dim)
            if not mask.all():  # else the batch's own buffer: no copy
                ids, vectors = ids[mask], vectors[mask]
            yield ids, np.ascontiguousarray(vectors, dtype=np.float32)

    def sorted_rows(self, keep: np.ndarray, kept_ids: np.ndarray) -> Iterator[pa.Table]:
        """The kept rows (no vectors) in ``image_id`` order, one bucket of about
        ``BUCKET_BYTES`` at a time; nothing for an empty spill."""
        if not len(kept_ids):
            return
        row_bytes = self.rows_path.stat().st_size / max(len(keep), 1)
        per_bucket = max(MIN_BUCKET_ROWS, int(BUCKET_BYTES // max(row_bytes, 1.0)),
                         -(-len(kept_ids) // MAX_BUCKETS))
        # Bucket b holds ids in [bounds[b-1], bounds[b]): equal counts, from the ids' quantiles.
        bounds = np.sort(kept_ids)[per_bucket::per_bucket]
        buckets = self.root / "buckets"
        buckets.mkdir(exist_ok=True)
        self._scatter(keep, bounds, buckets)
        for b in range(len(bounds) + 1):
            path = buckets / f"{b}.arrow"
            with pa.OSFile(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
            path.unlink()
            yield table.sort_by("image_id")

    def _scatter(self, keep: np.ndarray, bounds: np.ndarray, buckets: Path) -> None:
        """Each kept row to its bucket's file (one batch of rows in memory at a time)."""
        assert self.schema is not None
        schema = pa.schema([f for f in self.schema if f.name != "embedding"])
        with ExitStack() as stack:
            writers = [stack.enter_context(pa.ipc.new_stream(str(buckets / f"{b}.arrow"), schema))
                       for b in range(len(bounds) + 1)]
            offset = 0
            for batch in self.rows():
                mask = keep[offset:offset + batch.num_rows]
                offset += batch.num_rows
                ids = batch.column("image_id").to_numpy()
                bucket = np.searchsorted(bounds, ids, side="right")
                for b in np.unique(bucket[mask]):
                    rows = np.flatnonzero(mask & (bucket == b))
                    writers[int(b)].write_table(pa.Table.from_batches([batch]).take(rows))
