from __future__ import annotations

import math

import numpy as np
import pytest

from cbir.errors import InvalidArgument
from cbir.limits import Limits
from coordinator.queries import check_vector, prepare_query, resolve_k


def test_k_defaults_and_bounds() -> None:
    limits = Limits(max_k=50)
    assert resolve_k(0, limits) == 10
    assert resolve_k(50, limits) == 50
    for bad in (-1, 51):
        with pytest.raises(InvalidArgument, match="k must be between 1 and 50"):
            resolve_k(bad, limits)


def test_vector_dim_and_finiteness() -> None:
    assert check_vector([1.0, 2.0], 2).dtype == np.float64
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


class _Huge:
    """A repeated field of 30M values that must never be iterated (converted)."""

    def __len__(self) -> int:
        return 30_000_000

    def __iter__(self) -> object:
        raise AssertionError("converted before its length was checked")

    def __getitem__(self, i: int) -> float:
        raise AssertionError("converted before its length was checked")


def test_vector_length_is_checked_before_conversion() -> None:
    with pytest.raises(InvalidArgument, match="has 30000000 values; the index has dim 4"):
        check_vector(_Huge(), 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [3e38, 1e-45, 1e300])
def test_extreme_but_finite_ip_vectors_keep_their_direction(value: float) -> None:
    q = prepare_query(check_vector([value] * 1280, 1280), "ip")
    assert q.dtype == np.float32 and np.isfinite(q).all()
    assert np.isclose(float(np.linalg.norm(q)), 1.0, atol=1e-5)
    assert np.allclose(q, 1 / math.sqrt(1280), atol=1e-6)


def test_l2_vectors_whose_distances_overflow_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="overflow float32"):
        prepare_query(check_vector([3e38] * 4, 4), "l2")
    assert prepare_query(check_vector([1e18] * 4, 4), "l2").dtype == np.float32
