"""The live index on a replica (no grpc): each loaded index version's current ``LiveView``,
and the search / GetVectors paths that read it.

A ``LiveBox`` belongs to one ``LoadedIndex``: it starts at the version's folded log position
(``wal_seq`` in its manifest) and only moves forward, by one reference assignment per applied
batch of log entries. A search reads the box once and uses that one view for the base call (the
tombstone selector goes into the per-call Faiss parameters next to nprobe/efSearch) and for the
exact delta search, so a search never mixes two views; the base index is never mutated.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from cbir.faiss_params import search_parameters
from shard_server.log_follower import LogFollower
from shard_server.segments import LiveView, merge_top_k


@functools.cache
def limit_numpy_blas_threads() -> None:
    """numpy's own OpenBLAS (it runs the delta's matrix product) to one thread per call.
    A search of a few queries is a thin product: OpenBLAS' threads cost more in wake-ups than
    they save (10 ms instead of 0.3 ms for 1 x 10k on a busy 2-core machine), and the server
    already runs searches on several threads. Faiss' own BLAS and OpenMP are left alone."""
    ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=1)


class LiveBox:
    """The current view of one index version (swapped whole, read without a lock), and the
    follower that moves it along the log (set by the searcher when a log is configured)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self.follower: LogFollower | None = None

    def get(self) -> LiveView:
        return self.view

    def set(self, view: LiveView) -> None:
        self.view = view


def live_search(
    index: Any, view: LiveView, queries: np.ndarray, k: int, params: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Base (tombstoned rows hidden) + delta, merged exactly: (scores, ids), -1 padded."""
    selector = view.base_selector()
    scores, ids = index.search(queries, k, params=search_parameters(index, params, selector))
    if not view.delta.live_count:
        return scores, ids
    delta_scores, delta_ids = view.delta_candidates(queries, k, floor=kth_scores(scores, ids))
    if not delta_ids.shape[1]:  # no delta row can enter the top-k: the base answer stands
        return scores, ids
    return merge_top_k(scores, ids, delta_scores, delta_ids, k)


def kth_scores(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per query, the score of its k-th result, -inf where it has fewer than k."""
    return np.where(ids[:, -1] >= 0, scores[:, -1], -np.inf)


def delta_keys(view: LiveView, ids: np.ndarray, keys: list[str]) -> list[str]:
    """``keys`` (the base table's, "" where unknown) with the delta's keys filled in. A key is
    a function of its id, so any row of the grow-only delta that holds the id names it, also
    one a later view has superseded."""
    if not view.delta.size:
        return keys
    flat = ids.reshape(-1).tolist()
    out = list(keys)
    for i, image_id in enumerate(flat):
        if image_id < 0 or out[i]:
            continue
        row = view.delta.any_row(image_id)
        if row is not None:
            out[i] = view.delta.keys[row]
    return out


def split_live_ids(view: LiveView, wanted: np.ndarray, in_base: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For GetVectors: (served from the base, served from the delta) masks over ``wanted``."""
    from_delta = np.array([view.delta.row_of(int(i)) is not None for i in wanted.tolist()],
                          dtype=bool)
    hidden = np.array([view.hidden_in_base(int(i)) for i in wanted.tolist()], dtype=bool)
    return in_base & ~hidden & ~from_delta, from_delta


def without_hidden(view: LiveView, scores: np.ndarray, ids: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A base-only answer (a filtered search's brute-force plan, which asked for as many more
    rows as it has hidden) with the tombstoned rows removed, cut to ``k``: deleted or replaced
    images never come back."""
    if len(view.tombstones):
        hidden = np.isin(ids, view.tombstones)
        ids = np.where(hidden, -1, ids)
        scores = np.where(hidden, -np.inf, scores)
    return merge_top_k(scores, ids, scores[:, :0], ids[:, :0], k)
