"""Live state of one shard: the immutable base index + a delta segment + tombstones.

Upserts go to the delta (searched exactly, brute force) and hide the same id in the base with a
tombstone; deletes remove the id from the delta and tombstone it in the base. Searches read one
immutable ``LiveView``; applying a log entry builds the next view and the caller swaps it in with
one reference assignment, like an index roll, so a search never sees half an entry and the base
index is never mutated under a reader. The delta's rows live in a grow-only store
(``shard_server.delta``): a new view appends rows past the old view's end and lists superseded
rows as dead in its own array, so older views keep reading exactly what they saw. Each delta row
carries its metadata (typed like the base's metadata table), so filters cover the delta too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

import faiss as _faiss
import numpy as np
import pyarrow as pa

from cbir.errors import InvalidArgument
from cbir.wal import LogEntry, Upsert
from shard_server.delta import ALIVE, DEFAULT_SCHEMA, DeltaStore

faiss: Any = _faiss  # the stubs lag the SWIG module (IDSelectorNot, ...)


@dataclass(frozen=True)
class DeltaRows:
    """The delta's rows ``[0, size)`` of a shared grow-only store, as of log position ``seq``
    (which rows are live is the store's write-once ``dead_at``)."""

    store: DeltaStore
    size: int
    seq: int
    live_count: int

    @staticmethod
    def empty(dim: int, schema: pa.Schema = DEFAULT_SCHEMA, seq: int = 0) -> DeltaRows:
        store = DeltaStore(dim, schema)
        store.seq = seq
        return DeltaRows(store, 0, seq, 0)

    @property
    def ids(self) -> np.ndarray:
        return self.store.ids[: self.size]

    @property
    def keys(self) -> list[str]:
        return self.store.keys

    def live_mask(self) -> np.ndarray:
        return self.store.dead_at[: self.size] > self.seq

    @functools.cached_property
    def dead_rows(self) -> np.ndarray:
        """Rows below size that are dead in this view (computed once per view)."""
        return np.flatnonzero(self.store.dead_at[: self.size] <= self.seq)

    def live_ids(self) -> np.ndarray:
        return self.ids[self.live_mask()]

    def any_row(self, image_id: int) -> int | None:
        """The newest row of this view holding ``image_id``, live or not."""
        row = self.store.latest.get(image_id)
        if row is None or row < self.size:
            return row
        rows = np.flatnonzero(self.ids == image_id)  # written again after this view
        return int(rows[-1]) if len(rows) else None

    def row_of(self, image_id: int) -> int | None:
        """The live row of ``image_id`` in this view, if any."""
        row = self.any_row(image_id)
        return row if row is not None and self.store.dead_at[row] > self.seq else None


@dataclass(frozen=True)
class LiveView:
    """What one search reads: the base's ids, the delta, the tombstones, the log position."""

    base_ids: np.ndarray  # int64, sorted: every id stored in the base index
    delta: DeltaRows
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    applied_seq: int = 0
    _selector: Any = None

    @staticmethod
    def of_base(base_ids: np.ndarray, dim: int, applied_seq: int = 0,
                schema: pa.Schema = DEFAULT_SCHEMA) -> LiveView:
        """The view of a base alone; ``schema`` is the base's metadata table's (the delta's
        metadata rows get exactly these columns and types)."""
        ids = np.sort(np.asarray(base_ids, dtype=np.int64))
        return LiveView(ids, DeltaRows.empty(dim, schema, applied_seq), applied_seq=applied_seq)

    @property
    def dim(self) -> int:
        return self.delta.store.dim

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

    def delta_candidates(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None,
                         floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Unordered top-k candidates of the live delta rows (or of live ``rows``): (scores,
        ids), at most k per query, -inf / -1 where fewer; for ``merge_top_k`` to order.
        ``floor`` (per query: the k-th score a merge partner already has, -inf if it has
        fewer): only rows scoring at least that much can enter the merged top-k (ties
        included, they are ordered by id), which spares a single query the partition."""
        if floor is not None and len(queries) == 1:
            return self._single_candidates(queries, k, rows, float(floor[0]))
        store, size = self.delta.store, self.delta.size
        if rows is None:
            sims = queries @ store.columns[:, :size]
            dead = self.delta.dead_rows
            if len(dead):
                sims[:, dead] = -np.inf
            ids = store.ids[:size]
        else:
            sims, ids = queries @ store.columns[:, rows], store.ids[rows]
        return _top_k_of(sims, ids, k)

    def _single_candidates(self, queries: np.ndarray, k: int, rows: np.ndarray | None,
                           floor: float) -> tuple[np.ndarray, np.ndarray]:
        """One query: only the few rows at or above ``floor`` are looked at past the product
        (dead rows are dropped from those, not masked over the whole delta)."""
        store, size = self.delta.store, self.delta.size
        columns = store.columns[:, :size] if rows is None else store.columns[:, rows]
        sims = queries[0] @ columns
        above = np.flatnonzero(sims >= floor)
        if rows is not None:
            found = rows[above]
        else:
            keep = store.dead_at[above] > self.delta.seq
            found = above = above[keep]
        return _top_k_of(sims[above][None, :], store.ids[found], k)

    def search_delta(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-k over the live delta rows: (scores, ids), -1 padded."""
        scores, ids = self.delta_candidates(queries, k)
        return merge_top_k(scores, ids, scores[:, :0], ids[:, :0], k)

    def delta_vector(self, image_id: int) -> tuple[np.ndarray, str] | None:
        row = self.delta.row_of(image_id)
        if row is None:
            return None
        return self.delta.store.columns[:, row].copy(), self.delta.keys[row]


def _top_k_of(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered top-k columns of ``sims`` (n, m) with their ids (m,); -1 where not finite."""
    if k < len(ids):
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims, ids = np.take_along_axis(sims, top, axis=1), ids[top]
    else:
        ids = np.broadcast_to(ids, sims.shape)
    return sims, np.where(np.isfinite(sims), ids, -1)


def _apply_to_delta(delta: DeltaRows, entry: LogEntry, dim: int) -> tuple[DeltaRows, set[int]]:
    upserts = [op for op in entry.operations if isinstance(op, Upsert)]
    for upsert in upserts:
        if upsert.vector.shape != (dim,):
            raise InvalidArgument(
                f"upsert of {upsert.image_id}: vector has shape {upsert.vector.shape}, "
                f"the shard serves dim {dim}"
            )
    # Rows and marks past this view were written for views never published (a later entry of
    # their round failed): nobody reads them, so they are dropped and written again.
    store, seq = delta.store, entry.seq
    store.truncate(delta.size, delta.seq)
    live = delta.live_count
    row = store.append(upserts)
    touched: set[int] = set()
    for op in entry.operations:
        old = store.latest.get(op.image_id)
        if old is not None and store.dead_at[old] == ALIVE:
            store.dead_at[old] = seq
            live -= 1
        touched.add(op.image_id)
        if isinstance(op, Upsert):
            store.latest[op.image_id] = row
            row += 1
            live += 1
    store.seq = seq
    return DeltaRows(store, row, seq, live), touched



def merge_top_k(
    scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row top-k of two result sets (higher score first, ties by smaller id; -1 ids
    are padding and sort last)."""
    if len(scores_a) == 1 and scores_a.shape[1] + scores_b.shape[1] <= _SMALL_MERGE:
        return _merge_one(scores_a[0], ids_a[0], scores_b[0], ids_b[0], k)
    scores = np.concatenate([scores_a, scores_b], axis=1).astype(np.float32, copy=False)
    ids = np.concatenate([ids_a, ids_b], axis=1)
    padding = ids < 0
    if padding.any():
        scores = np.where(padding, -np.inf, scores)
    # Negating a float32 is exact, so the order is the scores' own.
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_ids = np.where(np.isfinite(out_scores), out_ids, -1)
    pad = k - out_ids.shape[1]
    if pad > 0:
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
    return out_scores, out_ids


_SMALL_MERGE = 64  # below this many candidates a Python sort beats numpy's per-call overheads


def _merge_one(scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray,
               ids_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``merge_top_k`` for one query and a few candidates (the live path's common case)."""
    ranked = sorted(
        (-score, image_id)
        for score, image_id in zip([*scores_a.tolist(), *scores_b.tolist()],
                                   [*ids_a.tolist(), *ids_b.tolist()], strict=True)
        if image_id >= 0 and score > -np.inf
    )[:k]
    out_scores = np.full((1, k), -np.inf, np.float32)
    out_ids = np.full((1, k), -1, np.int64)
    if ranked:
        out_scores[0, : len(ranked)] = [-score for score, _ in ranked]
        out_ids[0, : len(ranked)] = [image_id for _, image_id in ranked]
    return out_scores, out_ids
