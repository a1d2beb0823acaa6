"""Live state of one shard: the immutable base index + a delta segment + tombstones.

Upserts go to the delta (searched exactly, brute force) and hide the same id in the base with a
tombstone; deletes remove the id from the delta and tombstone it in the base. Searches read one
immutable ``LiveView``; applying a log entry builds the next view and the caller swaps it in with
one reference assignment, like an index roll, so a search never sees half an entry and the base
index is never mutated under a reader. The delta's rows live in a grow-only buffer: a new view
appends rows past the old view's end and marks superseded rows dead in its own mask, so older
views keep reading exactly what they saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import faiss as _faiss
import numpy as np

from cbir.errors import InvalidArgument
from cbir.wal import Delete, LogEntry, Upsert

faiss: Any = _faiss  # the stubs lag the SWIG module (IDSelectorNot, ...)


@dataclass(frozen=True)
class DeltaRows:
    """The delta's rows ``[0, size)`` of a shared grow-only buffer, and which are live."""

    buffer: np.ndarray  # float32 (capacity, dim); rows < size never change once written
    ids: np.ndarray  # int64 (capacity,)
    keys: tuple[str, ...]  # size
    size: int
    dead: np.ndarray  # bool (size,): superseded or deleted rows
    row_of: dict[int, int] = field(default_factory=dict)  # live id -> row

    @staticmethod
    def empty(dim: int, capacity: int = 1024) -> DeltaRows:
        return DeltaRows(np.zeros((capacity, dim), np.float32), np.full(capacity, -1, np.int64),
                         (), 0, np.zeros(0, bool))

    @property
    def live_count(self) -> int:
        return len(self.row_of)


@dataclass(frozen=True)
class LiveView:
    """What one search reads: the base's ids, the delta, the tombstones, the log position."""

    base_ids: np.ndarray  # int64, sorted: every id stored in the base index
    delta: DeltaRows
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    applied_seq: int = 0
    _selector: Any = None

    @staticmethod
    def of_base(base_ids: np.ndarray, dim: int, applied_seq: int = 0) -> LiveView:
        ids = np.sort(np.asarray(base_ids, dtype=np.int64))
        return LiveView(ids, DeltaRows.empty(dim), applied_seq=applied_seq)

    @property
    def dim(self) -> int:
        return int(self.delta.buffer.shape[1])

    @property
    def count(self) -> int:
        return len(self.base_ids) - len(self.tombstones) + self.delta.live_count

    def in_base(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.base_ids, ids)
        pos = np.minimum(pos, max(len(self.base_ids) - 1, 0))
        return (self.base_ids[pos] == ids) if len(self.base_ids) else np.zeros(len(ids), bool)

    def hidden_in_base(self, image_id: int) -> bool:
        pos = int(np.searchsorted(self.tombstones, image_id))
        return pos < len(self.tombstones) and int(self.tombstones[pos]) == image_id

    def apply(self, entry: LogEntry) -> LiveView:
        """The next view, with ``entry`` applied (entries must come in sequence order)."""
        if entry.seq != self.applied_seq + 1:
            raise InvalidArgument(
                f"log entry {entry.seq} applied after {self.applied_seq}: entries apply in order"
            )
        delta, touched = _apply_to_delta(self.delta, entry, self.dim)
        touched_ids = np.fromiter(touched, np.int64, len(touched))
        hide = touched_ids[self.in_base(touched_ids)]
        tombstones = np.union1d(self.tombstones, hide) if len(hide) else self.tombstones
        return replace(self, delta=delta, tombstones=tombstones, applied_seq=entry.seq,
                       _selector=None)

    def base_selector(self) -> Any | None:
        """A Faiss selector that hides the tombstoned base rows (None when there are none).
        Built once per view; the view keeps it (and the batch it points to) alive."""
        if not len(self.tombstones):
            return None
        if self._selector is None:
            batch = faiss.IDSelectorBatch(len(self.tombstones), faiss.swig_ptr(self.tombstones))
            selector = faiss.IDSelectorNot(batch)
            selector.referenced_objects = [batch]
            object.__setattr__(self, "_selector", selector)
        return self._selector

    def search_delta(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-k over the live delta rows: (scores, ids), -1 padded."""
        n = len(queries)
        scores = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        size = self.delta.size
        if not self.delta.live_count:
            return scores, ids
        sims = queries @ self.delta.buffer[:size].T
        sims[:, self.delta.dead] = -np.inf
        take = min(k, self.delta.live_count)
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        top_scores = np.take_along_axis(sims, top, axis=1)
        scores[:, :take] = top_scores
        ids[:, :take] = self.delta.ids[top]
        return merge_top_k(scores, ids, scores[:, :0], ids[:, :0], k)

    def delta_vector(self, image_id: int) -> tuple[np.ndarray, str] | None:
        row = self.delta.row_of.get(image_id)
        if row is None:
            return None
        return self.delta.buffer[row].copy(), self.delta.keys[row]


def _apply_to_delta(delta: DeltaRows, entry: LogEntry, dim: int) -> tuple[DeltaRows, set[int]]:
    upserts = [op for op in entry.operations if isinstance(op, Upsert)]
    for upsert in upserts:
        if upsert.vector.shape != (dim,):
            raise InvalidArgument(
                f"upsert of {upsert.image_id}: vector has shape {upsert.vector.shape}, "
                f"the shard serves dim {dim}"
            )
    buffer, ids = _with_room(delta.buffer, delta.ids, delta.size + len(upserts))
    keys = list(delta.keys)
    dead = np.concatenate([delta.dead, np.zeros(len(upserts), bool)])
    row_of = dict(delta.row_of)
    size = delta.size
    touched: set[int] = set()
    for op in entry.operations:
        old = row_of.pop(op.image_id, None)
        if old is not None:
            dead[old] = True
        touched.add(op.image_id)
        if isinstance(op, Delete):
            continue
        buffer[size] = op.vector
        ids[size] = op.image_id
        keys.append(op.key)
        row_of[op.image_id] = size
        size += 1
    dead = dead[:size]
    return DeltaRows(buffer, ids, tuple(keys), size, dead, row_of), touched


def _with_room(buffer: np.ndarray, ids: np.ndarray, needed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same buffers when they have room (rows past every view's end are free to write),
    else copies twice as large (older views keep the old ones)."""
    if needed <= len(buffer):
        return buffer, ids
    capacity = max(needed, 2 * len(buffer))
    grown = np.zeros((capacity, buffer.shape[1]), np.float32)
    grown[: len(buffer)] = buffer
    grown_ids = np.full(capacity, -1, np.int64)
    grown_ids[: len(ids)] = ids
    return grown, grown_ids


def merge_top_k(
    scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row top-k of two result sets (higher score first, ties by smaller id; -1 ids
    are padding and sort last)."""
    scores = np.concatenate([scores_a, scores_b], axis=1).astype(np.float32)
    ids = np.concatenate([ids_a, ids_b], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=1)[:, :k]
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_ids = np.where(np.isfinite(out_scores), out_ids, -1)
    pad = k - out_ids.shape[1]
    if pad > 0:
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
    return out_scores, out_ids
