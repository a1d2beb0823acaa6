"""The auto-selection rule (pure function) and factory helpers."""

from __future__ import annotations

import pytest

from cbir.errors import ResourceExhausted
from jobs.build_index import select

GIB = 1024**3


def test_small_shards_are_exact_flat() -> None:
    choice = select.choose_index(100_000, 1280, 4, 8 * GIB)  # 25k per shard
    assert choice.factory == "Flat"


def test_flat_limit_is_per_shard() -> None:
    assert select.choose_index(50_000 * 8, 512, 8, 8 * GIB).factory == "Flat"
    assert select.choose_index(50_001 * 8, 512, 8, 8 * GIB).factory == "HNSW32"


def test_hnsw_when_it_fits_then_ivf_flat_sq8_pq_as_budget_shrinks() -> None:
    n, dim = 1_000_000, 1280  # one shard of 1M x 1280-d: ~5.1 GB of raw floats
    assert select.choose_index(n, dim, 1, 8 * GIB).factory == "HNSW32"
    nlist = select.nlist_for(n)
    assert nlist == 4096
    ivf_flat = select.choose_index(n, dim, 1, int(5.0 * GIB))
    assert ivf_flat.factory == f"IVF{nlist},Flat"
    assert select.choose_index(n, dim, 1, 2 * GIB).factory == f"IVF{nlist},SQ8"
    pq = select.choose_index(n, dim, 1, int(0.2 * GIB))
    assert pq.factory.startswith(f"IVF{nlist},PQ")
    m = int(pq.factory.rsplit("PQ", 1)[1])
    assert dim % m == 0 and m <= select.MAX_PQ_M
    assert pq.estimated_bytes <= 0.2 * GIB


def test_choice_fits_budget_and_is_deterministic() -> None:
    for budget in (0.2, 0.5, 1, 4, 16):
        a = select.choose_index(3_000_000, 768, 3, int(budget * GIB))
        assert a == select.choose_index(3_000_000, 768, 3, int(budget * GIB))
        assert a.estimated_bytes <= budget * GIB


def test_nothing_fits_is_a_clear_error() -> None:
    with pytest.raises(ResourceExhausted, match="more shards"):
        select.choose_index(100_000_000, 1280, 1, 1 * GIB)


def test_nlist_has_enough_training_points_per_list() -> None:
    for n in (1, 100, 5_000, 20_000, 10_000_000):
        k = select.nlist_for(n)
        assert k >= 1 and (k == 1 or n // k >= select.MIN_POINTS_PER_CENTROID)
        assert k & (k - 1) == 0  # a power of two


def test_faiss_factory_wraps_indexes_without_native_ids() -> None:
    assert select.faiss_factory("Flat") == "IDMap2,Flat"
    assert select.faiss_factory("HNSW32") == "IDMap2,HNSW32"
    assert select.faiss_factory("IVF256,SQ8") == "IVF256,SQ8"
    assert select.faiss_factory("OPQ16,IVF256,PQ16") == "OPQ16,IVF256,PQ16"
    assert select.is_exact("IDMap2,Flat")
    assert not select.is_exact("IDMap2,HNSW32")
    assert not select.is_exact("IVF256,Flat")
