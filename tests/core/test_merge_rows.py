"""``merge_rows`` (a batch's merge, one sort) equals ``merge_top_k`` row by row."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.merge import ShardHits, ShardRows, merge_rows, merge_top_k


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_merge_rows_equals_merge_top_k_per_row(metric: str) -> None:
    rng = np.random.default_rng(3)
    n, k = 40, 6
    answers = []
    for shard in range(3):
        ids = rng.integers(0, 30, (n, k)).astype(np.int64)  # small range: duplicates, ties
        scores = rng.integers(0, 5, (n, k)).astype(np.float32)  # many equal scores
        ids[rng.random((n, k)) < 0.1] = -1
        scores[rng.random((n, k)) < 0.05] = np.nan
        keys = [f"s3://b/{shard}/{i}" for i in ids.reshape(-1).tolist()]
        answers.append(ShardRows(shard, ids, scores, keys))
    exclude = [int(rng.integers(0, 30)) if i % 3 == 0 else None for i in range(n)]
    got = merge_rows(answers, k, metric, exclude)
    for i in range(n):
        singles = [ShardHits(a.shard, a.ids[i], a.scores[i], a.keys[i * k:(i + 1) * k])
                   for a in answers]
        assert got[i] == merge_top_k(singles, k, metric, exclude[i])


def test_merge_rows_edge_cases() -> None:
    empty = ShardRows(0, np.full((2, 3), -1, np.int64), np.zeros((2, 3), np.float32), [""] * 6)
    assert merge_rows([empty], 3, "ip", [None, None]) == [[], []]
    assert merge_rows([], 3, "ip", [None]) == [[]]
    with pytest.raises(ValueError, match="unknown metric"):
        merge_rows([empty], 3, "cosine", [None, None])
