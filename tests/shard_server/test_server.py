"""A real gRPC shard server on 127.0.0.1:0: search, bad requests, health, reflection,
GetVectors, Stats, LoadIndex swaps, refusals, S3 loading and metrics."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cbir import index_layout, storage
from cbir.errors import FailedPrecondition, ModelMismatch, NotFound
from cbir.limits import Limits
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.index_store import Expectations, load_shard
from shard_server.server import ThreadedServer, serve_in_thread
from tests.build_index import fixtures as fx
from tests.shard_server.conftest import DIM, BuiltIndex, build, config


def _search(stub: cbir_pb2_grpc.ShardStub, queries: np.ndarray, k: int,
            **kw: object) -> tuple[np.ndarray, np.ndarray, list[str], cbir_pb2.ShardSearchResponse]:
    req = cbir_pb2.ShardSearchRequest(vectors=queries.astype("<f4").tobytes(),
                                      dim=queries.shape[1], k=k, **kw)  # type: ignore[arg-type]
    resp = stub.Search(req, timeout=10)
    ids = np.frombuffer(resp.ids, "<i8").reshape(resp.num_queries, resp.k)
    scores = np.frombuffer(resp.scores, "<f4").reshape(resp.num_queries, resp.k)
    return ids, scores, list(resp.keys), resp


def test_search_returns_the_exact_neighbours_and_keys(
    flat_index: BuiltIndex, stub: cbir_pb2_grpc.ShardStub
) -> None:
    rows = flat_index.shard_rows(0)
    queries = fx.random_vectors(5, DIM, seed=42)
    ids, scores, keys, resp = _search(stub, queries, 7)
    brute = queries @ flat_index.vectors[rows].T
    for q in range(5):
        order = np.argsort(-brute[q])[:7]
        assert ids[q].tolist() == flat_index.ids[rows[order]].tolist()
        np.testing.assert_allclose(scores[q], brute[q, order], rtol=1e-5)
        assert keys[q * 7 : q * 7 + 7] == [flat_index.keys[r] for r in rows[order]]
    assert (resp.shard, resp.metric, resp.index_version) == (0, "ip", flat_index.version)


BAD_REQUESTS = [
    (dict(dim=DIM + 1, k=5), grpc.StatusCode.INVALID_ARGUMENT, "dim 17 != index dim 16"),
    (dict(k=0), grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..1000"),
    (dict(k=-3), grpc.StatusCode.INVALID_ARGUMENT, "k must be in"),
    (dict(k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k must be in"),
    (dict(vectors=b"\x00" * 7, k=5), grpc.StatusCode.INVALID_ARGUMENT, "not a multiple"),
    (dict(vectors=b"", k=5), grpc.StatusCode.INVALID_ARGUMENT, "no query vectors"),
    (dict(vectors=np.full((1, DIM), np.nan, "<f4").tobytes(), k=5),
     grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    (dict(vectors=np.zeros((1025, DIM), "<f4").tobytes(), k=5),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "max batch 1024"),
    (dict(k=5, index_version="ix-other"), grpc.StatusCode.FAILED_PRECONDITION, "ix-other"),
    (dict(k=5, params=cbir_pb2.SearchParams(nprobe=-2)), grpc.StatusCode.INVALID_ARGUMENT,
     "nprobe must be >= 0"),
]


@pytest.mark.parametrize(("fields", "code", "message"), BAD_REQUESTS)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    stub: cbir_pb2_grpc.ShardStub, fields: dict[str, object], code: grpc.StatusCode,
    message: str,
) -> None:
    req = {"vectors": fx.random_vectors(1, DIM).tobytes(), "dim": DIM, **fields}
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(cbir_pb2.ShardSearchRequest(**req), timeout=10)  # type: ignore[arg-type]
    assert err.value.code() == code
    assert message in (err.value.details() or "")
    ids, _, _, _ = _search(stub, fx.random_vectors(1, DIM), 3)
    assert (ids >= 0).all()


def test_oversized_message_is_refused_by_grpc(flat_index: BuiltIndex) -> None:
    limits = Limits(max_message_bytes=64 * 1024)
    with serve_in_thread(config(flat_index.root, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        big = np.zeros((2000, DIM), "<f4").tobytes()  # 128 KB > 64 KB
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(cbir_pb2.ShardSearchRequest(vectors=big, dim=DIM, k=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ids, _, _, _ = _search(stub, fx.random_vectors(2, DIM), 3)
        assert (ids >= 0).all()


def _health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_goes_from_not_serving_to_serving(flat_index: BuiltIndex) -> None:
    with serve_in_thread(config(flat_index.root), load=False) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(channel, "cbir.v1.Shard") == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = cbir_pb2_grpc.ShardStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            _search(stub, fx.random_vectors(1, DIM), 3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.server is not None
        server.call(server.server.load())
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert _health(channel, "cbir.v1.Shard") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server: ThreadedServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"cbir.v1.Shard", "grpc.health.v1.Health"} <= names


def test_get_vectors_returns_stored_vectors_and_missing_ids(
    flat_index: BuiltIndex, stub: cbir_pb2_grpc.ShardStub
) -> None:
    rows = flat_index.shard_rows(0)[:3]
    other = flat_index.shard_rows(1)[0]
    wanted = [int(flat_index.ids[rows[0]]), 77, int(flat_index.ids[other]),
              int(flat_index.ids[rows[2]])]
    resp = stub.GetVectors(cbir_pb2.GetVectorsRequest(image_ids=wanted), timeout=10)
    assert list(resp.image_ids) == [wanted[0], wanted[3]]
    assert list(resp.missing_ids) == [77, wanted[2]]
    assert list(resp.keys) == [flat_index.keys[rows[0]], flat_index.keys[rows[2]]]
    got = np.frombuffer(resp.vectors, "<f4").reshape(2, resp.dim)
    np.testing.assert_array_equal(got, flat_index.vectors[[rows[0], rows[2]]])


def test_ivf_get_vectors_and_per_request_nprobe(ivf_index: BuiltIndex) -> None:
    with serve_in_thread(config(ivf_index.root, shard=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        rows = ivf_index.shard_rows(1)[:4]
        resp = stub.GetVectors(cbir_pb2.GetVectorsRequest(
            image_ids=ivf_index.ids[rows].tolist()), timeout=10)
        got = np.frombuffer(resp.vectors, "<f4").reshape(4, DIM)
        # SQ8 codes: reconstruction is approximate (1 byte per dimension)
        np.testing.assert_allclose(got, ivf_index.vectors[rows], atol=0.02)
        stats = stub.Stats(cbir_pb2.StatsRequest(), timeout=5)
        assert stats.factory == "IVF16,SQ8" and "nprobe" in stats.search_params
        full = cbir_pb2.SearchParams(nprobe=16)  # every list: the exact SQ8 ranking
        ids, _, _, _ = _search(stub, ivf_index.vectors[rows], 1, params=full)
        assert ids[:, 0].tolist() == ivf_index.ids[rows].tolist()


def test_stats_and_metrics(flat_index: BuiltIndex, server: ThreadedServer,
                           stub: cbir_pb2_grpc.ShardStub) -> None:
    _search(stub, fx.random_vectors(3, DIM), 2)
    with pytest.raises(grpc.RpcError):
        _search(stub, fx.random_vectors(1, DIM), 0)
    stats = stub.Stats(cbir_pb2.StatsRequest(), timeout=5)
    assert (stats.shard, stats.num_shards, stats.dim, stats.metric) == (0, 2, DIM, "ip")
    assert stats.count == len(flat_index.shard_rows(0))
    assert stats.index_version == flat_index.version and stats.model_version == fx.MODEL_VERSION
    assert stats.queries_served == 3 and stats.memory_bytes > 0
    assert server.server is not None
    registry = server.server.metrics.registry
    count = registry.get_sample_value
    assert count("cbir_shard_requests_total", {"method": "Search", "code": "OK"}) == 1
    assert count("cbir_shard_requests_total",
                 {"method": "Search", "code": "INVALID_ARGUMENT"}) == 1
    assert count("cbir_shard_index_vectors") == stats.count


def test_refuses_mismatched_dim_or_model_version(flat_index: BuiltIndex) -> None:
    with pytest.raises(ModelMismatch, match="dim 16 != expected dim 1280"):
        load_shard(flat_index.root, 0, Expectations(dim=1280))
    with pytest.raises(ModelMismatch, match="expects 'effnet-v9'"):
        load_shard(flat_index.root, 0, Expectations(model_version="effnet-v9"))
    with pytest.raises(ModelMismatch):
        ThreadedServer(config(flat_index.root, expect=Expectations(dim=8))).start()


def test_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no index for shard 0 .*shard=000/manifest\.json"):
        load_shard(str(tmp_path / "nothing"), 0, Expectations())


def _corrupt_copy(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    path = dst / index_layout.shard_dir_name(0) / index_layout.INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return str(dst)


def test_load_index_swaps_versions_and_refuses_a_corrupt_one(
    flat_index: BuiltIndex, flat_index_v2: BuiltIndex, stub: cbir_pb2_grpc.ShardStub,
    admin_stub: cbir_pb2_grpc.ShardStub, tmp_path: Path,
) -> None:
    corrupt = _corrupt_copy(flat_index_v2.root, tmp_path / "corrupt")
    with pytest.raises(grpc.RpcError) as err:
        admin_stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=corrupt), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "checksum" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        admin_stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=str(tmp_path / "none")),
                             timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    _, _, _, resp = _search(stub, fx.random_vectors(1, DIM), 3)
    assert resp.index_version == flat_index.version  # the old one still serves

    swap = admin_stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=flat_index_v2.root),
                                timeout=30)
    assert swap.swapped and swap.index_version == flat_index_v2.version
    assert swap.previous_version == flat_index.version
    rows = flat_index_v2.shard_rows(0)[:2]
    ids, _, keys, resp = _search(stub, flat_index_v2.vectors[rows], 1,
                                 index_version=flat_index_v2.version)
    assert ids[:, 0].tolist() == flat_index_v2.ids[rows].tolist()
    assert keys == [flat_index_v2.keys[r] for r in rows]
    with pytest.raises(grpc.RpcError) as err:
        _search(stub, flat_index_v2.vectors[rows], 1, index_version=flat_index.version)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_load_index_refuses_another_dim(flat_index: BuiltIndex, stub: cbir_pb2_grpc.ShardStub,
                                        admin_stub: cbir_pb2_grpc.ShardStub,
                                        tmp_path: Path) -> None:
    other = build(tmp_path, "d8", n=100, dim=8)
    with pytest.raises(grpc.RpcError) as err:
        admin_stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=other.root), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dim 8 != serving dim 16" in (err.value.details() or "")
    stats = stub.Stats(cbir_pb2.StatsRequest(), timeout=5)
    assert stats.index_version == flat_index.version


def test_serves_an_index_from_s3(flat_index: BuiltIndex, bucket: str) -> None:
    root = f"s3://{bucket}/indexes/v1"
    for name in storage.list_names(flat_index.root):
        storage.write_bytes(storage.join(root, name),
                            storage.read_bytes(storage.join(flat_index.root, name)))
    with serve_in_thread(config(root, shard=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        rows = flat_index.shard_rows(1)[:3]
        ids, scores, _, _ = _search(stub, flat_index.vectors[rows], 1)
        assert ids[:, 0].tolist() == flat_index.ids[rows].tolist()
        np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)
    storage.write_bytes(storage.join(root, "shard=000/index.faiss"), b"garbage")
    with pytest.raises(FailedPrecondition, match="checksum"):
        load_shard(root, 0, Expectations())


def test_metrics_endpoint_serves_prometheus_text(flat_index: BuiltIndex) -> None:
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    cfg = dataclasses.replace(config(flat_index.root), metrics_port=port)
    with serve_in_thread(cfg) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        _search(cbir_pb2_grpc.ShardStub(channel), fx.random_vectors(1, DIM), 2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    assert 'cbir_shard_requests_total{code="OK",method="Search"} 1.0' in text
    assert f'index_version="{flat_index.version}"' in text
