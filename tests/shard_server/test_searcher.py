"""The searcher core without grpc: validation, params, key mapping, batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from cbir.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from cbir.limits import Limits
from shard_server.batcher import BatchConfig
from shard_server.index_store import Expectations, LoadedIndex, load_shard
from shard_server.searcher import (
    SearcherConfig,
    ShardSearcher,
    check_k,
    decode_queries,
    merge_params,
    run_search,
)
from tests.shard_server.conftest import DIM, BuiltIndex

LIMITS = Limits(max_k=100, max_batch=8)


def test_decode_queries_checks_everything() -> None:
    good = np.ones((2, 4), "<f4")
    assert decode_queries(good.tobytes(), 4, 4, LIMITS).shape == (2, 4)
    with pytest.raises(InvalidArgument, match="dim 3 != index dim 4"):
        decode_queries(good.tobytes(), 3, 4, LIMITS)
    with pytest.raises(InvalidArgument, match="not a multiple"):
        decode_queries(good.tobytes()[:-1], 4, 4, LIMITS)
    with pytest.raises(InvalidArgument, match="no query"):
        decode_queries(b"", 4, 4, LIMITS)
    with pytest.raises(ResourceExhausted, match="max batch 8"):
        decode_queries(np.ones((9, 4), "<f4").tobytes(), 4, 4, LIMITS)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        decode_queries(bad.tobytes(), 4, 4, LIMITS)
    bad[1, 2] = np.inf
    with pytest.raises(InvalidArgument, match="infinity"):
        decode_queries(bad.tobytes(), 4, 4, LIMITS)


def test_k_and_params() -> None:
    check_k(1, LIMITS)
    check_k(100, LIMITS)
    for k in (0, -1, 101):
        with pytest.raises(InvalidArgument, match=r"k must be in 1\.\.100"):
            check_k(k, LIMITS)
    assert merge_params({"nprobe": 8}, {"nprobe": 0, "ef_search": 0}) == {"nprobe": 8}
    assert merge_params({"nprobe": 8}, {"nprobe": 32}) == {"nprobe": 32}
    with pytest.raises(InvalidArgument, match="nprobe must be >= 0"):
        merge_params({}, {"nprobe": -1})
    small = Limits(max_ef_search=100)  # the configured limit, not the default one
    assert merge_params({}, {"ef_search": 100}, small) == {"ef_search": 100}
    with pytest.raises(InvalidArgument, match="ef_search must be <= 100"):
        merge_params({}, {"ef_search": 101}, small)


def test_keys_of_maps_ids_and_blanks_no_result(flat_index: BuiltIndex) -> None:
    loaded = load_shard(flat_index.root, 0, Expectations())
    rows = flat_index.shard_rows(0)[:3]
    ids = np.array([flat_index.ids[rows[0]], -1, 12345, flat_index.ids[rows[2]]])
    assert loaded.keys_of(ids) == [flat_index.keys[rows[0]], "", "", flat_index.keys[rows[2]]]


def test_keys_of_reads_null_and_sliced_key_columns() -> None:
    ids = np.array([1, 2, 3])
    for keys in (pa.array(["a", None, "ccc"]), pa.array(["x", "a", None, "ccc"])[1:],
                 pa.array(["a", None, "ccc"], pa.large_string())):
        loaded = LoadedIndex(None, None, "", ids, keys, 0)  # type: ignore[arg-type]  # ids+keys only
        assert loaded.keys_of(np.array([3, 1, 2, -1, 9])) == ["ccc", "a", "", "", ""]


def test_k_larger_than_the_shard_pads_with_no_result(flat_index: BuiltIndex) -> None:
    loaded = load_shard(flat_index.root, 1, Expectations())
    _, ids = run_search(loaded, flat_index.vectors[:1], loaded.manifest.count + 5, {})
    assert (ids[0, -5:] == -1).all() and (ids[0, :-5] >= 0).all()


@pytest.mark.parametrize("batch", [BatchConfig(True, 0.002, 64), BatchConfig(False)])
def test_concurrent_searches_get_their_own_results(flat_index: BuiltIndex,
                                                   batch: BatchConfig) -> None:
    """Many concurrent requests of mixed k and sizes: each gets exactly its own answer."""
    loaded = load_shard(flat_index.root, 0, Expectations())
    queries = flat_index.vectors[:40]

    async def scenario() -> list[tuple[np.ndarray, np.ndarray]]:
        searcher = ShardSearcher(SearcherConfig(shard=0, batch=batch))
        with pytest.raises(Unavailable, match="not loaded"):
            await searcher.search(queries[:1].tobytes(), DIM, 5, {})
        await searcher.load(flat_index.root)
        calls = [searcher.search(queries[i : i + 1 + i % 3].tobytes(), DIM, 3 + i % 2, {})
                 for i in range(30)]
        results = await asyncio.gather(*calls)
        with pytest.raises(FailedPrecondition, match="requested"):
            await searcher.search(queries[:1].tobytes(), DIM, 5, {}, index_version="other")
        await searcher.close()
        return [(r.scores, r.ids) for r in results]

    for i, (scores, ids) in enumerate(asyncio.run(scenario())):
        want_scores, want_ids = run_search(loaded, queries[i : i + 1 + i % 3], 3 + i % 2, {})
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
