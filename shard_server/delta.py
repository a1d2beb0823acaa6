"""The delta's grow-only storage, shared by every view of one index version.

Rows are only ever appended: row ``r`` (its vector, id, key and metadata) never changes once
written, so a view that covers rows ``[0, size)`` reads exactly what it saw however many rows
later views append, and applying an entry costs the entry's rows, not a copy of the delta.

- Vectors are stored as columns, ``(dim, capacity)``: a query is then one row-vector x matrix
  product that streams the matrix once (measured here for one query over 10k rows: 58 us at
  dim 50 and 1.6 ms at dim 512 instead of 90 us and 10.7 ms for the row layout's short dot
  products). Growing copies into a twice larger array; older views read either array, both
  hold their rows.
- Metadata: one Arrow record batch per applied entry, typed like the base's metadata table
  (``cbir.live_metadata``), so a filter compiled for the base runs on the delta unchanged.
- Liveness is write-once too: ``dead_at[r]`` is the log position whose entry superseded or
  deleted row ``r`` (``ALIVE`` until then), so a view at position ``seq`` sees row ``r`` live
  iff ``r < size and dead_at[r] > seq``; ``latest`` maps an id to the newest row written for
  it. A view holds only its size, position and live count: no per-entry copy of an id map.
- Filter masks: per filter text, the mask over the rows evaluated so far; a later view only
  evaluates the rows appended since (rows never change, so a mask never goes stale).

Appends come from one log follower at a time (serialised); searches read concurrently.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from cbir.filters import Filter, matching_rows
from cbir.live_metadata import metadata_batch
from cbir.wal import Upsert

ALIVE = np.iinfo(np.int64).max
DEFAULT_SCHEMA = pa.schema([("image_id", pa.int64()), ("key", pa.string())])
MAX_MASKS = 256  # filters whose delta mask is kept (a mask is one byte per delta row)


class DeltaStore:
    def __init__(self, dim: int, schema: pa.Schema = DEFAULT_SCHEMA, capacity: int = 1024
                 ) -> None:
        self.dim = dim
        self.schema = schema
        self.columns = np.zeros((dim, capacity), np.float32)  # column r = row r's vector
        self.ids = np.full(capacity, -1, np.int64)
        self.dead_at = np.full(capacity, ALIVE, np.int64)
        self.latest: dict[int, int] = {}  # id -> the newest row written for it
        self.seq = 0  # the log position of the newest entry applied to the store
        self.keys: list[str] = []
        self.chunks: list[pa.RecordBatch] = []  # metadata, one batch per appended entry
        self.chunk_ends: list[int] = []  # row after each chunk
        self.size = 0
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()

    def append(self, upserts: Sequence[Upsert]) -> int:
        """Write ``upserts`` as rows past the end; returns the first new row."""
        first, n = self.size, len(upserts)
        if not n:
            return first
        batch = metadata_batch(upserts, self.schema)  # before any write: it may raise
        self._make_room(first + n)
        self.columns[:, first:first + n] = np.stack([u.vector for u in upserts]).T
        self.ids[first:first + n] = [u.image_id for u in upserts]
        self.keys.extend(u.key for u in upserts)
        self.chunks.append(batch)
        self.chunk_ends.append(first + n)
        self.size = first + n  # last: a reader never sees a row before it is written
        return first

    def truncate(self, size: int, seq: int) -> None:
        """Back to the state of the view (``size``, ``seq``): forget what entries after it
        wrote (only views nobody holds read that: a round of entries failed before its view
        was published)."""
        if size == self.size and seq == self.seq:
            return
        while self.chunk_ends and self.chunk_ends[-1] > size:
            self.chunks.pop()
            self.chunk_ends.pop()
        del self.keys[size:]
        self._masks = OrderedDict((text, mask[:size]) for text, mask in self._masks.items())
        self.dead_at[size:] = ALIVE
        self.dead_at[: size][self.dead_at[:size] > seq] = ALIVE
        self.latest = {int(i): row for row, i in enumerate(self.ids[:size].tolist())}
        self.size, self.seq = size, seq

    def _make_room(self, needed: int) -> None:
        capacity = self.columns.shape[1]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity)
        columns = np.zeros((self.dim, capacity), np.float32)
        columns[:, : self.size] = self.columns[:, : self.size]
        ids = np.full(capacity, -1, np.int64)
        ids[: self.size] = self.ids[: self.size]
        dead_at = np.full(capacity, ALIVE, np.int64)
        dead_at[: self.size] = self.dead_at[: self.size]
        self.columns, self.ids, self.dead_at = columns, ids, dead_at

    def metadata(self, rows: int) -> pa.Table:
        """The metadata of rows ``[0, rows)`` (``rows`` ends a chunk: a view's size)."""
        count = bisect.bisect_right(self.chunk_ends, rows)
        return pa.Table.from_batches(self.chunks[:count], schema=self.schema)

    def matching(self, flt: Filter, rows: int) -> np.ndarray:
        """Bool mask over rows ``[0, rows)``: which pass ``flt`` (liveness aside)."""
        mask = self._masks.get(flt.text, np.zeros(0, bool))
        done = len(mask)
        if done < rows:
            start = bisect.bisect_right(self.chunk_ends, done)
            end = bisect.bisect_right(self.chunk_ends, rows)
            table = pa.Table.from_batches(self.chunks[start:end], schema=self.schema)
            passing = np.zeros(table.num_rows, bool)
            passing[matching_rows(table.combine_chunks(), flt)] = True
            mask = np.concatenate([mask, passing])
            self._masks[flt.text] = mask
            while len(self._masks) > MAX_MASKS:
                self._masks.popitem(last=False)
        return mask[:rows]
