from __future__ import annotations

import math

import numpy as np
import pytest

from cbir.errors import InvalidArgument
from cbir.limits import Limits
from coordinator.queries import check_k, check_vector, prepare_query


def test_k_defaults_and_bounds() -> None:
    limits = Limits(max_k=50)
    assert check_k(0, limits) == 10
    assert check_k(50, limits) == 50
    for bad in (-1, 51):
        with pytest.raises(InvalidArgument, match="k must be between 1 and 50"):
            check_k(bad, limits)


def test_vector_dim_and_finiteness() -> None:
    assert check_vector([1.0, 2.0], 2).dtype == np.float32
    with pytest.raises(InvalidArgument, match="has 3 values; the index has dim 2"):
        check_vector([1.0, 2.0, 3.0], 2)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="NaN or infinite"):
            check_vector([1.0, bad], 2)


def test_ip_queries_are_normalised_and_zero_is_refused() -> None:
    q = prepare_query(np.array([3.0, 4.0], dtype=np.float32), "ip")
    assert np.allclose(q, [0.6, 0.8])
    with pytest.raises(InvalidArgument, match="zero vector"):
        prepare_query(np.zeros(2, dtype=np.float32), "ip")
    assert np.array_equal(prepare_query(np.zeros(2, dtype=np.float32), "l2"), [0.0, 0.0])
