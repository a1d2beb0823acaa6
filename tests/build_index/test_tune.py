"""Tuning helpers (pure): the nprobe candidate ladder and self-match-free recall."""

from __future__ import annotations

import faiss
import numpy as np

from jobs.build_index import tune


def _ivf(nlist: int) -> faiss.Index:
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(4), 4, nlist, faiss.METRIC_INNER_PRODUCT)


def test_nprobe_candidates_are_powers_of_two_then_nlist() -> None:
    assert tune.candidates(_ivf(1)) == [1]
    assert tune.candidates(_ivf(16)) == [1, 2, 4, 8, 16]
    assert tune.candidates(_ivf(100)) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert tune.candidates(faiss.IndexFlatIP(4)) == []


def test_recall_ignores_the_query_itself() -> None:
    truth = np.array([[7, 1, 2], [8, 3, 4]])
    found = np.array([[1, 7, 9], [3, 4, 8]])
    assert tune.recall_at_k(truth, found, np.array([7, 8]), 2) == 0.75
