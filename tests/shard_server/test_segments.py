"""Live segments: base + delta + tombstones searched together equal a brute-force search over
the expected live set (ids and order), for Flat and IVF bases; older views never change."""

from __future__ import annotations

from typing import Any

import faiss as _faiss
import numpy as np
import pytest

from cbir.errors import InvalidArgument
from cbir.wal import Delete, LogEntry, Upsert
from shard_server.segments import LiveView, merge_top_k

faiss: Any = _faiss
DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _base(vectors: np.ndarray, ids: np.ndarray, factory: str) -> Any:
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    wrapped = faiss.IndexIDMap2(index)
    wrapped.add_with_ids(vectors, ids)
    return wrapped


def _search(index: Any, view: LiveView, queries: np.ndarray, k: int, nprobe: int = 0) -> Any:
    selector = view.base_selector()
    params = None
    if selector is not None or nprobe:
        inner = faiss.downcast_index(index.index)
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
                  if isinstance(inner, faiss.IndexIVF) else faiss.SearchParameters(sel=selector))
    base_scores, base_ids = index.search(queries, k, params=params)
    delta_scores, delta_ids = view.search_delta(queries, k)
    return merge_top_k(base_scores, base_ids, delta_scores, delta_ids, k)


def _brute(live: dict[int, np.ndarray], queries: np.ndarray, k: int) -> np.ndarray:
    ids = np.array(sorted(live), np.int64)
    mat = np.stack([live[i] for i in ids])
    sims = queries @ mat.T
    out = []
    for row in sims:
        order = np.lexsort((ids, -row.astype(np.float64)))[:k]
        out.append(ids[order])
    return np.array(out)


@pytest.mark.parametrize(("factory", "nprobe"), [("Flat", 0), ("IVF8,Flat", 8)])
def test_live_search_equals_brute_force(factory: str, nprobe: int) -> None:
    rng = np.random.default_rng(0)
    base_ids = rng.choice(10**9, 500, replace=False).astype(np.int64)
    base_vecs = _unit(rng, 500)
    index = _base(base_vecs, base_ids, factory)
    live = dict(zip(base_ids.tolist(), base_vecs, strict=True))
    view = LiveView.of_base(base_ids, DIM)
    for seq in range(1, 31):
        ops: list[Upsert | Delete] = []
        for _ in range(10):
            choice = rng.random()
            if choice < 0.3 and live:  # delete something (base or delta)
                victim = int(rng.choice(list(live)))
                ops.append(Delete(victim))
                live.pop(victim)
            else:  # replace an existing id or add a new one
                target = int(rng.choice(list(live))) if choice < 0.6 else int(rng.integers(10**10))
                vec = _unit(rng, 1)[0]
                ops.append(Upsert(target, f"s3://b/{target}", vec))
                live[target] = vec
        view = view.apply(LogEntry(seq, 0, tuple(ops), "v", 0))
    queries = _unit(rng, 20)
    _, got = _search(index, view, queries, 10, nprobe)
    np.testing.assert_array_equal(got, _brute(live, queries, 10))
    assert view.count == len(live)
    assert view.applied_seq == 30


def test_older_views_do_not_change() -> None:
    rng = np.random.default_rng(1)
    view0 = LiveView.of_base(np.arange(5, dtype=np.int64), DIM)
    vec_a, vec_b = _unit(rng, 2)
    view1 = view0.apply(LogEntry(1, 0, (Upsert(100, "s3://b/a", vec_a),), "v", 0))
    view2 = view1.apply(LogEntry(2, 0, (Upsert(100, "s3://b/a2", vec_b), Delete(3)), "v", 0))
    _, ids1 = view1.search_delta(vec_a[None, :], 1)
    assert ids1.tolist() == [[100]]
    assert view1.delta_vector(100) is not None
    np.testing.assert_array_equal(view1.delta_vector(100)[0], vec_a)  # type: ignore[index]
    np.testing.assert_array_equal(view2.delta_vector(100)[0], vec_b)  # type: ignore[index]
    assert not view1.hidden_in_base(3) and view2.hidden_in_base(3)
    assert view0.count == 5 and view1.count == 6 and view2.count == 5


def test_entries_apply_in_order_and_dims_match() -> None:
    view = LiveView.of_base(np.arange(3, dtype=np.int64), DIM)
    with pytest.raises(InvalidArgument, match="in order"):
        view.apply(LogEntry(2, 0, (Delete(1),), "v", 0))
    with pytest.raises(InvalidArgument, match="dim"):
        view.apply(LogEntry(1, 0, (Upsert(9, "k", np.ones(3, np.float32)),), "v", 0))


def test_delta_grows_past_its_first_buffer() -> None:
    rng = np.random.default_rng(2)
    view = LiveView.of_base(np.zeros(0, np.int64), DIM)
    vecs = _unit(rng, 3000)
    for seq, start in enumerate(range(0, 3000, 500), start=1):
        ops = tuple(Upsert(i, f"k{i}", vecs[i]) for i in range(start, start + 500))
        view = view.apply(LogEntry(seq, 0, ops, "v", 0))
    _, ids = view.search_delta(vecs[[7, 2999]], 1)
    assert ids.ravel().tolist() == [7, 2999]
    assert view.count == 3000


def test_a_failed_round_leaves_the_published_view_and_applies_again_the_same() -> None:
    """Entries applied past the published view for a round that then failed wrote rows and
    liveness marks nobody reads: applying again from the published view gives the state a
    fresh replica reaches."""
    rng = np.random.default_rng(4)
    vecs = _unit(rng, 4)
    entries = [LogEntry(1, 0, (Upsert(100, "s3://b/a", vecs[0]), Delete(2)), "v", 0),
               LogEntry(2, 0, (Upsert(100, "s3://b/a", vecs[1]), Upsert(101, "k", vecs[2]),
                               Delete(101)), "v", 0)]
    published = LiveView.of_base(np.arange(5, dtype=np.int64), DIM)
    unpublished = published.apply(entries[0]).apply(entries[1])
    with pytest.raises(InvalidArgument, match="dim"):
        unpublished.apply(LogEntry(3, 0, (Upsert(9, "k", np.ones(3, np.float32)),), "v", 0))
    again = published.apply(entries[0]).apply(entries[1])
    fresh = LiveView.of_base(np.arange(5, dtype=np.int64), DIM).apply(entries[0]).apply(
        entries[1])
    for view in (again, fresh):
        assert view.count == 5 and view.delta.live_ids().tolist() == [100]
        np.testing.assert_array_equal(view.delta_vector(100)[0], vecs[1])  # type: ignore[index]
        assert view.delta_vector(101) is None and view.hidden_in_base(2)
    assert published.count == 5 and published.delta.live_count == 0
