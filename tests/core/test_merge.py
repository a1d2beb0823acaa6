from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbir.merge import ShardHits, merge_top_k


def hits(shard: int, ids: list[int], scores: list[float]) -> ShardHits:
    return ShardHits(shard, np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float32),
                     [f"k{i}" if i >= 0 else "" for i in ids])


def test_ip_is_descending_and_l2_ascending() -> None:
    answers = [hits(0, [10, 11], [0.9, 0.1]), hits(1, [20, 21], [0.5, 0.3])]
    assert [h.image_id for h in merge_top_k(answers, 3, "ip")] == [10, 20, 21]
    assert [h.image_id for h in merge_top_k(answers, 3, "l2")] == [11, 21, 20]


def test_ties_break_by_ascending_id_whatever_the_shard_order() -> None:
    a = [hits(0, [30, 5], [0.5, 0.5]), hits(1, [7, 2], [0.5, 0.4])]
    assert [h.image_id for h in merge_top_k(a, 3, "ip")] == [5, 7, 30]
    assert [h.image_id for h in merge_top_k(a[::-1], 3, "ip")] == [5, 7, 30]


def test_minus_one_ids_are_dropped_and_keys_and_shards_kept() -> None:
    a = [hits(0, [1, -1, -1], [0.2, 0.0, 0.0]), hits(1, [4, -1, -1], [0.7, 9.0, 9.0])]
    merged = merge_top_k(a, 3, "ip")
    assert [(h.image_id, h.key, h.shard) for h in merged] == [(4, "k4", 1), (1, "k1", 0)]


def test_exclude_query_image() -> None:
    a = [hits(0, [1, 2], [1.0, 0.5]), hits(1, [3], [0.7])]
    assert [h.image_id for h in merge_top_k(a, 2, "ip", exclude_id=1)] == [3, 2]


def test_unknown_metric_is_an_error() -> None:
    with pytest.raises(ValueError, match="metric"):
        merge_top_k([hits(0, [1], [1.0])], 1, "cosine")


def test_empty_and_k_zero() -> None:
    assert merge_top_k([], 5, "ip") == []
    assert merge_top_k([hits(0, [1], [1.0])], 0, "ip") == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=60, unique=True),
    st.integers(1, 4),
    st.integers(1, 20),
    st.sampled_from(["ip", "l2"]),
    st.randoms(use_true_random=False),
)
def test_sharded_merge_equals_one_flat_ranking(
    ids: list[int], num_shards: int, k: int, metric: str, rnd: object
) -> None:
    # Scores from a small set so ties are frequent.
    scores = {i: float(rnd.choice([0.1, 0.2, 0.3, 0.4])) for i in ids}  # type: ignore[attr-defined]
    desc = metric == "ip"
    flat = sorted(ids, key=lambda i: (-scores[i] if desc else scores[i], i))[:k]
    answers = []
    for s in range(num_shards):
        mine = sorted((i for i in ids if i % num_shards == s),
                      key=lambda i: (-scores[i] if desc else scores[i], i))[:k]
        padded = mine + [-1] * (k - len(mine))
        answers.append(hits(s, padded, [scores.get(i, 0.0) for i in padded]))
    assert [h.image_id for h in merge_top_k(answers, k, metric)] == flat
