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
