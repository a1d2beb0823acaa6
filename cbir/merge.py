"""Exact top-K across shards. Pure numpy: no grpc.

Every shard returns its own exact top-k (k >= the requested K), so the global top-K is the
top-K of their union. Order: metric "ip" by descending score, "l2" by ascending distance; ties
by ascending image id, so the answer does not depend on which shard answered first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbir.ids import NO_RESULT

METRICS = ("ip", "l2")


@dataclass(frozen=True)
class ShardHits:
    """One shard's answer to one query: ids and scores of length k, -1 ids for no result."""

    shard: int
    ids: np.ndarray  # int64 (k,)
    scores: np.ndarray  # float32 (k,)
    keys: Sequence[str]


@dataclass(frozen=True)
class MergedHit:
    image_id: int
    key: str
    score: float
    shard: int


def higher_is_better(metric: str) -> bool:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    return metric == "ip"


def merge_top_k(
    answers: Sequence[ShardHits], k: int, metric: str, exclude_id: int | None = None
) -> list[MergedHit]:
    descending = higher_is_better(metric)
    if k <= 0 or not answers:
        return []
    ids = np.concatenate([np.asarray(a.ids, dtype=np.int64) for a in answers])
    scores = np.concatenate([np.asarray(a.scores, dtype=np.float64) for a in answers])
    shards = np.concatenate(
        [np.full(len(a.ids), a.shard, dtype=np.int32) for a in answers]
    )
    offsets = np.concatenate(
        [np.arange(len(a.ids), dtype=np.int64) for a in answers]
    )
    keep = (ids != NO_RESULT) & np.isfinite(scores)
    if exclude_id is not None:
        keep &= ids != exclude_id
    ids, scores, shards, offsets = ids[keep], scores[keep], shards[keep], offsets[keep]
    primary = -scores if descending else scores
    order = np.lexsort((ids, primary))  # last key is the primary one
    by_shard = {a.shard: a for a in answers}
    hits: list[MergedHit] = []
    seen: set[int] = set()
    for i in order:
        image_id = int(ids[i])
        if image_id in seen:  # an id answered twice keeps its best-ranked entry
            continue
        seen.add(image_id)
        shard = int(shards[i])
        keys = by_shard[shard].keys
        offset = int(offsets[i])
        key = keys[offset] if offset < len(keys) else ""
        hits.append(MergedHit(image_id, key, float(scores[i]), shard))
        if len(hits) == k:
            break
    return hits


@dataclass(frozen=True)
class ShardRows:
    """One shard's answer to n queries at once: (n, k) ids and scores, n * k keys row-major."""

    shard: int
    ids: np.ndarray  # int64 (n, k)
    scores: np.ndarray  # float32 (n, k)
    keys: Sequence[str]


def merge_rows(answers: Sequence[ShardRows], k: int, metric: str,
               exclude_ids: Sequence[int | None]) -> list[list[MergedHit]]:
    """``merge_top_k`` of every query of a batch with ONE sort: row i equals
    ``merge_top_k([row i of each answer], k, metric, exclude_ids[i])`` (same order, same ties,
    same dropping of -1 ids, non-finite scores and the excluded id)."""
    descending = higher_is_better(metric)
    if k <= 0 or not answers:
        return [[] for _ in exclude_ids]
    ids = np.concatenate([np.asarray(a.ids, dtype=np.int64) for a in answers], axis=1)
    scores = np.concatenate([np.asarray(a.scores, dtype=np.float64) for a in answers], axis=1)
    exclude = np.array([NO_RESULT if e is None else e for e in exclude_ids], np.int64)[:, None]
    drop = (ids == NO_RESULT) | ~np.isfinite(scores) | (ids == exclude)
    # Dropped entries sort last (inf), so a row's walk stops at its first dropped entry.
    primary = np.where(drop, np.inf, -scores if descending else scores)
    order = np.lexsort((ids, primary), axis=-1)
    columns = [(a, j) for a in answers for j in range(a.ids.shape[1])]
    return [_row_hits(i, order[i], ids[i], scores[i], drop[i], columns, k)
            for i in range(len(exclude_ids))]


def _row_hits(row: int, order: np.ndarray, ids: np.ndarray, scores: np.ndarray,
              drop: np.ndarray, columns: list[tuple[ShardRows, int]], k: int
              ) -> list[MergedHit]:
    hits: list[MergedHit] = []
    seen: set[int] = set()
    for column in order.tolist():
        if drop[column]:
            break
        image_id = int(ids[column])
        if image_id in seen:  # an id answered twice keeps its best-ranked entry
            continue
        seen.add(image_id)
        answer, offset = columns[column]
        at = row * answer.ids.shape[1] + offset
        key = answer.keys[at] if at < len(answer.keys) else ""
        hits.append(MergedHit(image_id, key, float(scores[column]), answer.shard))
        if len(hits) == k:
            break
    return hits
