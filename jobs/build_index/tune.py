"""Search-parameter tuning against exact ground truth (pure: numpy + Faiss, no I/O).

For an approximate index, the smallest nprobe / efSearch whose recall@10 against an exact
inner-product scan reaches the target is chosen. Queries are sampled from the indexed vectors
themselves; each query's own id is removed from both the exact and the approximate lists before
comparing, so the trivial self-match does not inflate recall (this is "held out" in the sense
that matters: a query never gets credit for finding itself).
"""

from __future__ import annotations

import logging
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


def exact_topk(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product (ties broken by Faiss's order)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, pos = flat.search(queries, k)
    return np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1)


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
    vectors: np.ndarray,
    ids: np.ndarray,
    query_rows: np.ndarray,
    target_recall: float,
) -> TuneResult:
    """Tune ``index`` (already holding ``vectors`` under ``ids``) on the rows ``query_rows``."""
    if len(query_rows) == 0:
        return TuneResult({}, 1.0, True)  # an empty shard finds everything it holds
    name = param_name(index)
    queries = np.ascontiguousarray(vectors[query_rows])
    query_ids = ids[query_rows]
    truth = exact_topk(vectors, ids, queries, RECALL_K + 1)

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
    log.warning(
        "recall@10 target %.3f not reached; best %.4f with %s", target_recall,
        best.recall_at_10, best.search_params,
    )
    return best
