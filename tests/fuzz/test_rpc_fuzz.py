"""Request handling under thousands of generated requests: a real shard server (real Faiss
index) and a real coordinator (real model for image queries, real gRPC shard replicas). Every
reply is OK or a clean client error, never INTERNAL/UNKNOWN/a timeout; afterwards health is
SERVING and a normal query still gives the exact answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbir.embedding import load_embedder
from coordinator.query_embedder import CbirQueryEmbedder
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import ThreadedServer, serve_in_thread
from tests.coordinator.harness import Cluster, LoopThread, flat_top_k, make_dataset, start_cluster
from tests.fuzz.conftest import TRIED, examples
from tests.fuzz.inputs import image_bytes
from tests.shard_server.conftest import DIM, BuiltIndex, build, config, with_admin

CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.PERMISSION_DENIED}
FUZZ_ROOT = "/nonexistent-cbir-fuzz"  # LoadIndex URIs: allowed root, nothing to load there
TIMEOUT_S = 20.0


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=timedelta(seconds=TIMEOUT_S + 5), database=None,
                    suppress_health_check=list(HealthCheck))


def call(method: Any, request: Any) -> grpc.StatusCode:
    try:
        method(request, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        assert code in CLEAN, f"{code}: {err.details()} for {request!r:.300}"
        return code
    return grpc.StatusCode.OK


floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
ints32 = st.one_of(st.integers(-3, 20), st.integers(-(2**31), 2**31 - 1))
int64s = st.one_of(st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1))
texts = st.text(max_size=40)
params = st.builds(cbir_pb2.SearchParams, nprobe=ints32, ef_search=ints32)


@st.composite
def packed_vectors(draw: st.DrawFn) -> tuple[bytes, int]:
    dim = draw(st.one_of(st.just(DIM), ints32))
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096)), dim
    rows = draw(st.integers(0, 4))
    values = draw(st.lists(floats32, min_size=rows * DIM, max_size=rows * DIM))
    return np.array(values, dtype="<f4").tobytes(), dim


@st.composite
def shard_search(draw: st.DrawFn) -> cbir_pb2.ShardSearchRequest:
    vectors, dim = draw(packed_vectors())
    return cbir_pb2.ShardSearchRequest(vectors=vectors, dim=dim, k=draw(ints32),
                                       params=draw(params), index_version=draw(texts),
                                       request_id=draw(texts))


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("fuzz-flat"), "fuzz", n=300)


@pytest.fixture(scope="module")
def shard_server(shard_index: BuiltIndex) -> Iterator[ThreadedServer]:
    with serve_in_thread(with_admin(config(shard_index.root), FUZZ_ROOT)) as running:
        yield running


@pytest.fixture(scope="module")
def shard_channel(shard_server: ThreadedServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{shard_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def admin_channel(shard_server: ThreadedServer) -> Iterator[grpc.Channel]:
    """The loopback admin port: LoadIndex gets past the role check to the URI checks."""
    assert shard_server.server is not None
    with grpc.insecure_channel(f"127.0.0.1:{shard_server.server.admin_port}") as channel:
        yield channel


def assert_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(300)
@fuzz(examples(2000) // 2)
@given(request=shard_search())
def test_shard_search_fuzz(shard_channel: grpc.Channel, request: Any) -> None:
    TRIED["Shard.Search"] += 1
    call(cbir_pb2_grpc.ShardStub(shard_channel).Search, request)


@pytest.mark.timeout(300)
@fuzz(examples(2000) // 8)
@given(request=st.one_of(
    st.builds(cbir_pb2.GetVectorsRequest, image_ids=st.lists(int64s, max_size=50),
              request_id=texts),
    st.builds(cbir_pb2.StatsRequest),
    st.builds(cbir_pb2.LoadIndexRequest,
              index_uri=texts.map(lambda t: f"{FUZZ_ROOT}/{t}"))))
def test_shard_other_rpcs_fuzz(shard_channel: grpc.Channel, admin_channel: grpc.Channel,
                               request: Any) -> None:
    TRIED["Shard.GetVectors/Stats/LoadIndex"] += 1
    stub = cbir_pb2_grpc.ShardStub(shard_channel)
    admin = cbir_pb2_grpc.ShardStub(admin_channel)
    method = {cbir_pb2.GetVectorsRequest: stub.GetVectors, cbir_pb2.StatsRequest: stub.Stats,
              cbir_pb2.LoadIndexRequest: admin.LoadIndex}[type(request)]
    call(method, request)


def rss_bytes() -> int:
    """This process's resident memory (the servers under test run in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# Repeated fields from empty to millions of items: refused by size before conversion or by
# count after, never converted into a list first (memory stays flat).
lengths = st.one_of(st.integers(0, 2000), st.sampled_from([1024, 1025, 100_000, 2_000_000]))
RSS_BUDGET = 200 * 1024 * 1024


@pytest.mark.timeout(300)
def test_shard_repeated_field_lengths_fuzz(shard_channel: grpc.Channel) -> None:
    stub = cbir_pb2_grpc.ShardStub(shard_channel)
    call(stub.GetVectors, cbir_pb2.GetVectorsRequest(image_ids=[1] * 2_000_000))  # warm-up
    before = rss_bytes()

    @fuzz(examples(2000) // 40)
    @given(n=lengths, value=int64s)
    def run(n: int, value: int) -> None:
        TRIED["Shard.GetVectors lengths"] += 1
        code = call(stub.GetVectors, cbir_pb2.GetVectorsRequest(image_ids=[value] * n))
        if n > 1024:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    run()
    assert rss_bytes() - before < RSS_BUDGET
    assert_serving(shard_channel)


def test_shard_still_serves_exact_answers(shard_channel: grpc.Channel,
                                          shard_index: BuiltIndex) -> None:
    assert_serving(shard_channel)
    stub = cbir_pb2_grpc.ShardStub(shard_channel)
    rows = shard_index.shard_rows(0)
    query = shard_index.vectors[rows[0]]
    reply = stub.Search(cbir_pb2.ShardSearchRequest(vectors=query.astype("<f4").tobytes(),
                                                    dim=DIM, k=1), timeout=10)
    assert np.frombuffer(reply.ids, "<i8")[0] == shard_index.ids[rows[0]]


# ------------------------------------------------------------------------- coordinator


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    emb = load_embedder("efficientnet_lite0", device="cpu")
    loop = LoopThread()
    running = start_cluster(loop, num_shards=2, replicas=1, data=make_dataset(n=60, dim=emb.dim),
                            embedder_factory=lambda: CbirQueryEmbedder(emb),
                            model_version=emb.version)
    yield running
    running.close()
    loop.close()


@pytest.fixture(scope="module")
def coord_channel(cluster: Cluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield channel


def known_or_random_id(cluster: Cluster) -> st.SearchStrategy[int]:
    return st.one_of(int64s, st.sampled_from([int(i) for i in cluster.data.ids]))


@st.composite
def coordinator_search(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Any:
    req = cbir_pb2.SearchRequest(k=draw(ints32), exclude_query_image=draw(st.booleans()),
                                 request_id=draw(texts))
    if draw(st.booleans()):
        req.params.CopyFrom(draw(params))
    which = draw(st.sampled_from(("image", "vector", "image_id", "none")))
    if which == "image":
        req.image = draw(image_bytes)
    elif which == "vector":
        dim = draw(st.sampled_from((1280, 0, 1, 16, 1279, 1281)))
        values = draw(st.one_of(st.lists(floats32, min_size=dim, max_size=dim),
                                st.just([1.0] * dim), st.just([0.0] * dim)))
        req.vector.values.extend(values)
    elif which == "image_id":
        req.image_id = draw(ids)
    return req


@pytest.mark.timeout(300)
def test_coordinator_search_fuzz(cluster: Cluster, coord_channel: grpc.Channel) -> None:
    stub = cbir_pb2_grpc.CoordinatorStub(coord_channel)

    @fuzz(examples(2000) // 4)
    @given(request=coordinator_search(known_or_random_id(cluster)))
    def run(request: Any) -> None:
        TRIED["Coordinator.Search"] += 1
        call(stub.Search, request)

    run()
    call(stub.Info, cbir_pb2.InfoRequest())


@pytest.mark.timeout(300)
def test_coordinator_vector_lengths_fuzz(cluster: Cluster, coord_channel: grpc.Channel) -> None:
    stub = cbir_pb2_grpc.CoordinatorStub(coord_channel)
    dim = cluster.data.vectors.shape[1]
    before = rss_bytes()

    @fuzz(examples(2000) // 40)
    @given(n=lengths, value=floats32)
    def run(n: int, value: float) -> None:
        TRIED["Coordinator.Search vector lengths"] += 1
        request = cbir_pb2.SearchRequest(vector=cbir_pb2.FloatVector(
            values=np.full(n, value, dtype=np.float32)), k=3)
        code = call(stub.Search, request)
        if n != dim:
            assert code == grpc.StatusCode.INVALID_ARGUMENT

    run()
    assert rss_bytes() - before < RSS_BUDGET
    assert_serving(coord_channel)


def test_coordinator_still_serves_exact_answers(cluster: Cluster,
                                                coord_channel: grpc.Channel) -> None:
    assert_serving(coord_channel)
    stub = cbir_pb2_grpc.CoordinatorStub(coord_channel)
    query = cluster.data.vectors[3]
    reply = stub.Search(cbir_pb2.SearchRequest(vector=cbir_pb2.FloatVector(
        values=query.tolist()), k=5), timeout=10)
    assert not reply.partial
    assert [h.image_id for h in reply.hits] == flat_top_k(cluster.data, query, 5)


