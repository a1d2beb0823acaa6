"""The search benchmark's 1280-d working point keeps GloVe's neighbourhoods."""

from __future__ import annotations

import numpy as np

from bench import harness
from bench.search_data import WIDE_DIM, projected_glove_set


def test_projected_glove_is_wide_unit_and_keeps_neighbours() -> None:
    wide = projected_glove_set(4000, 100)
    assert wide.base.shape == (4000, WIDE_DIM) and wide.base.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(wide.base, axis=1), 1.0, atol=1e-5)
    again = projected_glove_set(4000, 100)
    np.testing.assert_array_equal(wide.base, again.base)  # seeded: the same set every run
    # The same rows in 50-d: the exact neighbours mostly agree (projection + small noise).
    raw = harness.load_glove()
    rng = np.random.default_rng(0)
    rows = np.sort(rng.permutation(len(raw))[: 4000 + 200])
    narrow = harness.l2_normalise(raw[rows])
    order = np.random.default_rng(0).permutation(len(rows))  # make_vector_set's split
    base50, queries50 = narrow[np.sort(order[200:])], narrow[order[:100]]
    agree = harness.recall_at_k(harness.exact_topk(base50, queries50), wide.truth)
    assert agree >= 0.6, agree
