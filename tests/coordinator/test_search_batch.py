"""SearchBatch through a real coordinator over real shard servers (real IVF indexes, Faiss):
each query's answer equals the single Search's, bad queries fail alone, the bounds hold, and
the whole batch costs one Shard.Search per shard."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.client import BatchQuery, CoordinatorClient, SearchResult
from cbir.errors import InvalidArgument, ResourceExhausted
from cbir.limits import DEFAULT_LIMITS
from coordinator.caching import CacheConfig
from protos import cbir_pb2, cbir_pb2_grpc
from tests.build_index import fixtures as fx
from tests.coordinator.harness import LoopThread
from tests.coordinator.test_filters_caches import Running, start, stop
from tests.shard_server import filter_fixtures as ff

pytestmark = pytest.mark.slow
DIM = 16


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ff.MetaIndex:
    return ff.build_meta_index(tmp_path_factory.mktemp("batch"), "batch",
                               fx.random_vectors(1500, DIM, seed=5), "IVF8,Flat", seed=5)


@pytest.fixture(scope="module")
def running(loop_thread: LoopThread, index: ff.MetaIndex,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """No answer cache: every answer below is computed, none replayed."""
    r = start(loop_thread, index.root, str(tmp_path_factory.getbasetemp()), CacheConfig(0, 0))
    yield r
    stop(loop_thread, r)


def shard_search_calls(r: Running) -> float:
    return sum(s.metrics.registry.get_sample_value(
        "cbir_shard_requests_total", {"method": "Search", "code": "OK"}) or 0.0
        for s in r.shards)


def same(batch: SearchResult, single: SearchResult) -> None:
    assert batch.ok and not batch.partial
    assert [h.image_id for h in batch.hits] == [h.image_id for h in single.hits]
    assert [h.key for h in batch.hits] == [h.key for h in single.hits]
    np.testing.assert_allclose([h.score for h in batch.hits], [h.score for h in single.hits],
                               rtol=1e-5, atol=1e-5)
    assert batch.index_version == single.index_version


def test_batch_of_vectors_and_ids_equals_single_searches(running: Running,
                                                         index: ff.MetaIndex) -> None:
    queries = fx.random_vectors(12, DIM, seed=9)
    ids = [int(i) for i in index.ids[:6]]
    with CoordinatorClient(running.address, timeout_s=30) as client:
        singles = ([client.search_vector(q, k=7) for q in queries]
                   + [client.search_id(i, k=7, exclude_query_image=True) for i in ids])
        before = shard_search_calls(running)
        got = client.search_batch([BatchQuery(vector=q) for q in queries]
                                  + [BatchQuery(image_id=i) for i in ids],
                                  k=7, exclude_query_image=True)
        calls = shard_search_calls(running) - before
        as_matrix = client.search_batch(queries * 3.0, k=7)  # any scale: normalised for ip
    assert len(got) == len(singles) == 18
    for b, s in zip(got, singles, strict=True):
        same(b, s)
    assert all(i not in [h.image_id for h in r.hits] for i, r in zip(ids, got[12:], strict=True))
    assert calls == 2  # one Shard.Search per shard carried all 18 queries
    for b, s in zip(as_matrix, singles[:12], strict=True):
        same(b, s)


def test_batch_with_a_filter_equals_filtered_single_searches(running: Running,
                                                             index: ff.MetaIndex) -> None:
    queries = fx.random_vectors(5, DIM, seed=11)
    pct = dict(zip(index.ids.tolist(), index.table.column("pct").to_pylist(), strict=True))
    with CoordinatorClient(running.address, timeout_s=30) as client:
        singles = [client.search_vector(q, k=9, filter="pct < 300") for q in queries]
        got = client.search_batch(queries, k=9, filter="pct < 300")
        with pytest.raises(InvalidArgument, match="nope"):
            client.search_batch(queries, k=9, filter="nope > 1")
    for b, s in zip(got, singles, strict=True):
        same(b, s)
        assert b.hits and all(pct[h.image_id] < 300 for h in b.hits)


def test_bad_queries_fail_alone(running: Running, index: ff.MetaIndex) -> None:
    good = fx.random_vectors(2, DIM, seed=13)
    with CoordinatorClient(running.address, timeout_s=30) as client:
        singles = [client.search_vector(q, k=5) for q in good]
        got = client.search_batch([
            BatchQuery(vector=good[0]), BatchQuery(image_id=12345),
            BatchQuery(vector=[0.5] * (DIM + 1)), BatchQuery(vector=[float("nan")] * DIM),
            BatchQuery(vector=[0.0] * DIM), BatchQuery(image_id=-4),
            BatchQuery(image=b"not an image at all"), BatchQuery(vector=good[1]),
        ], k=5)
    same(got[0], singles[0])
    same(got[7], singles[1])
    assert [r.error_code for r in got[1:7]] == [
        "NOT_FOUND", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
        "INVALID_ARGUMENT", "FAILED_PRECONDITION"]  # the last: image queries are off here
    assert "unknown image id 12345" in got[1].error and not got[1].hits
    assert f"dim {DIM}" in got[2].error and "NaN" in got[3].error
    assert "zero vector" in got[4].error and "non-negative" in got[5].error


def test_bounds_are_checked_first(running: Running) -> None:
    one = fx.random_vectors(1, DIM, seed=1)[0]
    too_many = np.tile(one, (DEFAULT_LIMITS.max_batch + 1, 1))
    with CoordinatorClient(running.address, timeout_s=30) as client:
        with pytest.raises(ResourceExhausted, match=r"1025 queries .* limit of 1024"):
            client.search_batch(too_many, k=3)
        with pytest.raises(ResourceExhausted, match="65 image queries"):
            client.search_batch([BatchQuery(image=b"x")] * 65, k=3)
        with pytest.raises(InvalidArgument, match="at least one query"):
            client.search_batch([], k=3)
        with pytest.raises(InvalidArgument, match="k must be between"):
            client.search_batch([BatchQuery(vector=one)], k=5000)
        assert client.search_batch([BatchQuery(vector=one)], k=3)[0].ok  # still serving


def test_oversized_request_is_refused_before_parsing(running: Running) -> None:
    """Over the method's byte budget: RESOURCE_EXHAUSTED from the request guard."""
    query = cbir_pb2.SearchBatchRequest.Query(image=b"\0" * (DEFAULT_LIMITS.max_image_bytes))
    request = cbir_pb2.SearchBatchRequest(queries=[query, query], k=3)
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(running.address, options=options) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        cbir_pb2_grpc.CoordinatorStub(channel).SearchBatch(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_answer_cache_serves_batch_queries_per_query(loop_thread: LoopThread,
                                                     index: ff.MetaIndex,
                                                     tmp_path: Path) -> None:
    """Batch queries share the single queries' cache keys: a single Search stores, the same
    query in a batch is served from the cache, and vice versa."""
    r = start(loop_thread, index.root, str(tmp_path.parent), CacheConfig())
    try:
        q = fx.random_vectors(2, DIM, seed=17)
        with CoordinatorClient(r.address, timeout_s=30) as client:
            single = client.search_vector(q[0], k=4)
            hits_before = r.lookups("result", "hit")
            batch = client.search_batch(q, k=4)
            assert r.lookups("result", "hit") == hits_before + 1
            again = client.search_vector(q[1], k=4)
            assert r.lookups("result", "hit") == hits_before + 2
        same(batch[0], single)
        same(batch[1], again)
    finally:
        stop(loop_thread, r)


class CountingEmbedder:
    """The real model, counting its forward passes (one ``embed_batch`` call each)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name, self.dim, self.version = inner.name, inner.dim, inner.version  # type: ignore[attr-defined]
        self.batches: list[int] = []

    def embed_batch(self, images: list[bytes]) -> list[object]:
        self.batches.append(len(images))
        return self.inner.embed_batch(images)  # type: ignore[attr-defined, no-any-return]


def test_image_queries_with_the_real_model_in_one_model_batch(
        loop_thread: LoopThread, photos: list[object], tmp_path: Path) -> None:
    """Real photos, real model: a batch of images (plus an undecodable one and an id) equals
    the single image searches, and its images went through the model in ONE forward pass."""
    pytest.importorskip("torch")
    from coordinator.query_embedder import load_query_embedder
    from demo.photos import Photo, encode_jpeg

    embedder = CountingEmbedder(load_query_embedder("efficientnet_lite0", None, "cpu"))
    chosen: list[Photo] = photos[:10]  # type: ignore[assignment]
    jpegs = [encode_jpeg(p.pixels) for p in chosen]
    vectors = np.stack([v for v in embedder.inner.embed_batch(jpegs)  # type: ignore[attr-defined]
                        if isinstance(v, np.ndarray)])
    index = ff.build_meta_index(tmp_path, "photos", vectors, "Flat", seed=4,
                                model_version=embedder.version)
    r = start(loop_thread, index.root, str(tmp_path), CacheConfig(0, 0), embedder)
    try:
        with CoordinatorClient(r.address, timeout_s=60) as client:
            singles = [client.search_image(j, k=4) for j in jpegs[:4]]
            embedder.batches.clear()
            got = client.search_batch([BatchQuery(image=j) for j in jpegs[:4]]
                                      + [BatchQuery(image=b"\xff\xd8 broken"),
                                         BatchQuery(image_id=int(index.ids[5]))], k=4)
    finally:
        stop(loop_thread, r)
    assert embedder.batches == [5]
    for b, s, i in zip(got, singles, range(4), strict=False):
        same(b, s)
        assert b.hits[0].image_id == int(index.ids[i])
    assert got[4].error_code == "INVALID_ARGUMENT" and not got[4].hits
    assert got[5].ok and got[5].hits[0].image_id == int(index.ids[5])


def test_packed_vectors_are_checked(running: Running) -> None:
    """Packed ``vectors``: rows of ``dim`` float32 values, never together with ``queries``."""
    stub_call = _raw_search_batch(running)
    rows = fx.random_vectors(3, DIM, seed=2)
    ok = stub_call(cbir_pb2.SearchBatchRequest(vectors=rows.tobytes(), dim=DIM, k=3))
    assert [len(r.hits) for r in ok.results] == [3, 3, 3]
    for request, message in [
        (cbir_pb2.SearchBatchRequest(vectors=rows.tobytes()[:-4], dim=DIM),
         "are not rows of dim 16"),
        (cbir_pb2.SearchBatchRequest(vectors=rows.tobytes(), dim=0), "not rows of dim 0"),
        (cbir_pb2.SearchBatchRequest(vectors=rows.tobytes(), dim=DIM, queries=[
            cbir_pb2.SearchBatchRequest.Query(image_id=1)]), "not both"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub_call(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")
    tiny = np.ones((DEFAULT_LIMITS.max_batch + 1, 1), np.float32)  # dim 1: count checked first
    with pytest.raises(grpc.RpcError) as caught:
        stub_call(cbir_pb2.SearchBatchRequest(vectors=tiny.tobytes(), dim=1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _raw_search_batch(r: Running
                      ) -> Callable[[cbir_pb2.SearchBatchRequest], cbir_pb2.SearchBatchResponse]:
    def call(request: cbir_pb2.SearchBatchRequest) -> cbir_pb2.SearchBatchResponse:
        with grpc.insecure_channel(r.address) as channel:
            return cbir_pb2_grpc.CoordinatorStub(channel).SearchBatch(request, timeout=30)

    return call
