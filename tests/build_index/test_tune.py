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


def test_recall_counts_first_k_after_removing_the_query_and_padding() -> None:
    truth = np.array([[5, 1, 2, 3], [6, 4, -1, -1]])
    found = np.array([[1, 9, 5, 2], [-1, 4, 6, 7]])
    # row 0: truth [1, 2] (5 is the query), found [1, 9]: 1 of 2; row 1: truth [4], found [4, 7]
    assert tune.recall_at_k(truth, found, np.array([5, 6]), 2) == 2 / 3


def test_exact_topk_streams_chunks_to_the_brute_force_answer() -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3_000, 16)).astype(np.float32)
    ids = np.arange(3_000, dtype=np.int64) * 3 + 1
    queries = rng.standard_normal((300, 16)).astype(np.float32)  # more than one query block
    chunks = [(ids[i:i + 700], base[i:i + 700]) for i in range(0, 3_000, 700)]
    got = tune.exact_topk(chunks, queries, 11)
    expected = ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :11]]
    assert np.array_equal(got, expected)
    small = tune.exact_topk([(ids[:4], base[:4])], queries[:2], 6)  # fewer rows than k
    assert (small[:, 4:] == -1).all() and set(small[0, :4]) == set(ids[:4])


def test_refining_bisects_the_powers_of_two_overshoot() -> None:
    measured: list[int] = []

    def measure(params: dict[str, int]) -> float:
        measured.append(params["nprobe"])
        return min(1.0, params["nprobe"] / 100)  # recall grows with nprobe; 45 is the least

    # The ladder found 64 (0.64) after 32 (0.32) missed a 0.45 target.
    found = tune._refine(measure, "nprobe", 32, tune.TuneResult({"nprobe": 64}, 0.64, True),
                         0.45)
    assert found == tune.TuneResult({"nprobe": 48}, 0.48, True)  # within 1/8 of the least
    assert measured == [48, 40, 44]
    # Nothing to refine between neighbours.
    assert tune._refine(measure, "nprobe", 1, tune.TuneResult({"nprobe": 2}, 0.02, True),
                        0.01).search_params == {"nprobe": 2}
