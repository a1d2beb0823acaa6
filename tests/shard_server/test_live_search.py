"""The shard's live search path (``shard_server.live``) on the index kinds the build makes:
base (tombstones hidden through the per-call Faiss parameters, with nprobe/efSearch kept) +
delta equals a brute-force search over the expected live set, ids and order."""

from __future__ import annotations

from typing import Any

import faiss as _faiss
import numpy as np
import pytest

from cbir.wal import Delete, LogEntry, Upsert
from shard_server.live import delta_keys, live_search, split_live_ids
from shard_server.segments import LiveView

faiss: Any = _faiss
DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(factory: str, vectors: np.ndarray, ids: np.ndarray) -> Any:
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    return index


@pytest.mark.parametrize(("factory", "params"), [
    ("IDMap2,Flat", {}),
    ("IVF4,Flat", {"nprobe": 4}),
    ("IDMap2,HNSW16", {"ef_search": 256}),
    ("RR16,IVF4,Flat", {"nprobe": 4}),
])
def test_live_search_is_exact_over_the_live_set(factory: str, params: dict[str, int]) -> None:
    rng = np.random.default_rng(1)
    base_ids = np.sort(rng.choice(10**12, 300, replace=False)).astype(np.int64)
    base = _unit(rng, 300)
    index = _index(factory, base, base_ids)
    live = dict(zip(base_ids.tolist(), base, strict=True))
    view = LiveView.of_base(base_ids, DIM)
    replaced, deleted = base_ids[:40].tolist(), base_ids[40:80].tolist()
    new = _unit(rng, 60)
    ops: list[Upsert | Delete] = [Upsert(i, f"s3://b/{i}", new[j]) for j, i in enumerate(replaced)]
    ops += [Delete(i) for i in deleted]
    ops += [Upsert(10**13 + j, f"s3://b/new{j}", new[40 + j]) for j in range(20)]
    view = view.apply(LogEntry(1, 0, tuple(ops), "v", 0))
    for op in ops:
        if isinstance(op, Delete):
            live.pop(op.image_id)
        else:
            live[op.image_id] = op.vector
    queries = _unit(rng, 8)
    _scores, ids = live_search(index, view, queries, 10, params)
    all_ids = np.array(sorted(live), np.int64)
    sims = queries @ np.stack([live[i] for i in all_ids]).T
    expected = np.array([all_ids[np.lexsort((all_ids, -row.astype(np.float64)))[:10]]
                         for row in sims])
    np.testing.assert_array_equal(ids, expected)
    assert not set(ids.reshape(-1).tolist()) & set(deleted)
    keys = delta_keys(view, ids, [""] * ids.size)
    assert keys[list(ids.reshape(-1)).index(ids[0, 0])] == (
        f"s3://b/{ids[0, 0]}" if ids[0, 0] in replaced else keys[0])


def test_without_writes_the_base_answer_is_unchanged() -> None:
    rng = np.random.default_rng(2)
    ids = np.arange(100, dtype=np.int64)
    index = _index("IVF4,Flat", _unit(rng, 100), ids)
    view = LiveView.of_base(ids, DIM)
    queries = _unit(rng, 3)
    got = live_search(index, view, queries, 5, {"nprobe": 2})
    params = faiss.SearchParametersIVF(nprobe=2)
    want = index.search(queries, 5, params=params)
    np.testing.assert_array_equal(got[1], want[1])


def test_split_live_ids_for_get_vectors() -> None:
    ids = np.arange(10, dtype=np.int64)
    view = LiveView.of_base(ids, DIM).apply(LogEntry(1, 0, (
        Upsert(3, "s3://b/3", np.ones(DIM, np.float32)), Delete(4),
        Upsert(50, "s3://b/50", np.ones(DIM, np.float32))), "v", 0))
    wanted = np.array([2, 3, 4, 50, 99], np.int64)
    from_base, from_delta = split_live_ids(view, wanted, np.isin(wanted, ids))
    assert from_base.tolist() == [True, False, False, False, False]
    assert from_delta.tolist() == [False, True, False, True, False]
    assert delta_keys(view, np.array([50, 3, -1]), ["", "", ""]) == ["s3://b/50", "s3://b/3", ""]
