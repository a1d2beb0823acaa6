"""Search-parameter tuning against exact ground truth (pure: numpy + Faiss, no I/O).

For an approximate index, the smallest nprobe / efSearch whose recall@10 against an exact
inner-product scan reaches the target is chosen. Queries are sampled from the indexed vectors
themselves; each query's own id is removed from both the exact and the approximate lists before
comparing, so the trivial self-match does not inflate recall (this is "held out" in the sense
that matters: a query never gets credit for finding itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from cbir.faiss_params import EF_SEARCH, NPROBE, nlist, param_name, search_parameters

log = logging.getLogger(__name__)

RECALL_K = 10
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)


@dataclass(frozen=True)
class TuneResult:
    search_params: dict[str, int]
    recall_at_10: float
    reached_target: bool


def exact_topk(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
               k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product over ``(ids, vectors)`` chunks, streamed: one
    chunk and a k-heap per query in memory, never the shard's vectors."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vectors in chunks:
        scores, pos = faiss.knn(queries, vectors, min(k, len(ids)), faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1))
    heap.finalize()
    return np.asarray(heap.I)


def recall_at_k(truth: np.ndarray, found: np.ndarray, query_ids: np.ndarray, k: int) -> float:
    """Mean |found ∩ truth| / |truth| over queries, each query's own id removed from both."""
    hits = 0
    total = 0
    for row_truth, row_found, qid in zip(truth, found, query_ids, strict=True):
        t = [int(i) for i in row_truth if i != qid and i >= 0][:k]
        f = [int(i) for i in row_found if i != qid and i >= 0][:k]
        hits += len(set(t) & set(f))
        total += len(t)
    return hits / total if total else 1.0


def candidates(index: Any) -> list[int]:
    name = param_name(index)
    if name == NPROBE:
        lists = nlist(index)
        out = [1 << i for i in range(lists.bit_length())]  # powers of two <= nlist
        return out if out and out[-1] == lists else [*out, lists]
    if name == EF_SEARCH:
        return list(EF_CANDIDATES)
    return []


def tune(
    index: Any,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    target_recall: float,
) -> TuneResult:
    """Tune ``index`` on ``queries`` (indexed vectors, ids ``query_ids``) against ``truth``,
    their exact top-(k+1) ids (``exact_topk``)."""
    if len(queries) == 0:
        return TuneResult({}, 1.0, True)  # an empty shard finds everything it holds
    name = param_name(index)

    def measure(params: dict[str, int]) -> float:
        _, found = index.search(queries, RECALL_K + 1, params=search_parameters(index, params))
        return recall_at_k(truth, found, query_ids, RECALL_K)

    if name is None:  # nothing to tune (e.g. PCA + Flat): report what it achieves
        recall = measure({})
        return TuneResult({}, recall, recall >= target_recall)
    best = TuneResult({}, -1.0, False)
    for value in candidates(index):
        params = {name: value}
        recall = measure(params)
        log.debug("%s=%d recall@10=%.4f", name, value, recall)
        if recall >= target_recall:
            return TuneResult(params, recall, True)
        if recall > best.recall_at_10:
            best = TuneResult(params, recall, False)
    return best  # the caller refuses to ship it
