"""Hostile requests against real processes: a `cbir serve-coordinator` process over two real
`python -m shard_server` processes serving a real Faiss index. Each attack gets the right status
code, the servers stay SERVING, the process's RSS (from /proc) does not grow by more than
~100 MB, and a bad request leaves one short log line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.rpc.health import wait_serving
from protos import cbir_pb2, cbir_pb2_grpc
from tests.conftest import free_port
from tests.shard_server.conftest import DIM, SHARDS, BuiltIndex, build

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
RSS_GROWTH_LIMIT = 100 * MB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    address: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


def _spawn(args: list[str], stderr: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CBIR_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=stderr.open("w"))


@dataclass
class RealCluster:
    index: BuiltIndex
    shards: list[Proc]
    coordinator: Proc


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    tmp = tmp_path_factory.mktemp("hostile")
    index = build(tmp, "hostile", n=300)
    shards: list[Proc] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for s in range(SHARDS):
            err = tmp / f"shard{s}.log"
            p = _spawn(["-m", "shard_server", "--index", index.root, "--shard", str(s),
                        "--port", "0", "--drain-seconds", "0"], err)
            procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line.startswith("listening on 127.0.0.1:"), line
            shards.append(Proc(p, line.removeprefix("listening on "), err))
        topo = tmp / "topology.json"
        topo.write_text(json.dumps({"shards": {str(s): [p.address]
                                               for s, p in enumerate(shards)}}))
        port, err = free_port(), tmp / "coordinator.log"
        c = _spawn(["-m", "cbir.cli", "serve-coordinator", "--topology", str(topo), "--port",
                    str(port), "--no-image-queries"], err)
        procs.append(c)
        coordinator = Proc(c, f"127.0.0.1:{port}", err)
        for server in [*shards, coordinator]:
            wait_serving(server.address, timeout_s=60)
        yield RealCluster(index, shards, coordinator)
    finally:
        for popen in procs:
            popen.kill()
            popen.wait()


def raw_method(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    """A method that sends bytes as they are: the server sees exactly what an attacker sends."""
    return channel.unary_unary(method, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def code_of(call: grpc.UnaryUnaryMultiCallable, payload: object, timeout: float = 30
            ) -> tuple[grpc.StatusCode, str]:
    try:
        call(payload, timeout=timeout)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def assert_still_answers(cluster: RealCluster) -> None:
    for server in [*cluster.shards, cluster.coordinator]:
        wait_serving(server.address, timeout_s=10)
    with grpc.insecure_channel(cluster.coordinator.address) as channel:
        stub = cbir_pb2_grpc.CoordinatorStub(channel)
        query = cluster.index.vectors[0].astype(np.float32)
        reply = stub.Search(cbir_pb2.SearchRequest(
            vector=cbir_pb2.FloatVector(values=query.tolist()), k=1), timeout=10)
    assert reply.hits[0].image_id == int(cluster.index.ids[0]) and not reply.partial


def test_twenty_oversized_and_garbage_searches_keep_coordinator_memory(
    real_cluster: RealCluster,
) -> None:
    pid = real_cluster.coordinator.popen.pid
    options = [("grpc.max_send_message_length", 64 * MB)]
    big = os.urandom(32 * MB)  # over the coordinator's receive limit
    vector = cbir_pb2.SearchRequest(  # 19 MB: within the limit, 5M floats for a dim-16 index
        vector=cbir_pb2.FloatVector(values=np.zeros(19 * MB // 4, np.float32))
    ).SerializeToString()
    garbage = b"\xff" * (19 * MB)  # within the limit, but no protobuf message
    with grpc.insecure_channel(real_cluster.coordinator.address, options=options) as channel:
        search = raw_method(channel, "/cbir.v1.Coordinator/Search")
        # First uses: grpc's buffers and the allocator's pools reach their working size (a
        # high-water mark, not growth per request); what is measured is what comes after.
        for _ in range(3):
            for payload in (big, vector, garbage):
                code_of(search, payload)
        before = rss_bytes(pid)
        for _ in range(20):
            assert code_of(search, big)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            code, details = code_of(search, vector)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"has {19 * MB // 4} values; the index has dim {DIM}" in details
            assert code_of(search, garbage)[0] == grpc.StatusCode.INVALID_ARGUMENT
            # Info needs a few bytes: a large one is refused before it is parsed.
            info = raw_method(channel, "/cbir.v1.Coordinator/Info")
            assert code_of(info, b"\x00" * MB)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    growth = rss_bytes(pid) - before
    print(f"coordinator RSS {before / MB:.0f} MB -> +{growth / MB:.0f} MB after 80 requests")
    assert growth < RSS_GROWTH_LIMIT, f"coordinator RSS grew by {growth / MB:.0f} MB"
    assert_still_answers(real_cluster)


def test_thirty_million_ids_are_refused_before_conversion(real_cluster: RealCluster) -> None:
    shard = real_cluster.shards[0]
    request = cbir_pb2.GetVectorsRequest(image_ids=[0] * 30_000_000).SerializeToString()
    before = rss_bytes(shard.popen.pid)
    with grpc.insecure_channel(shard.address) as channel:
        get_vectors = raw_method(channel, "/cbir.v1.Shard/GetVectors")
        for _ in range(5):
            code, details = code_of(get_vectors, request)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "exceeds this method's limit" in details
    growth = rss_bytes(shard.popen.pid) - before
    print(f"shard RSS {before / MB:.0f} MB -> +{growth / MB:.0f} MB after 5 x 30M ids")
    assert growth < RSS_GROWTH_LIMIT, f"shard RSS grew by {growth / MB:.0f} MB"
    assert_still_answers(real_cluster)


def test_garbage_bytes_log_one_line_and_no_traceback(real_cluster: RealCluster) -> None:
    with grpc.insecure_channel(real_cluster.coordinator.address) as channel:
        search = raw_method(channel, "/cbir.v1.Coordinator/Search")
        for _ in range(5):
            code, details = code_of(search, b"\x0a\xff\xff\xff\xff\x0f garbage")
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "do not parse" in details
    log = real_cluster.coordinator.log()
    assert log.count("refused /cbir.v1.Coordinator/Search") >= 5
    assert "Traceback" not in log
    assert_still_answers(real_cluster)


def test_long_index_version_is_refused_and_not_echoed(real_cluster: RealCluster) -> None:
    version = "v" + "A" * 10_000
    query = real_cluster.index.vectors[0].astype("<f4").tobytes()
    with grpc.insecure_channel(real_cluster.shards[0].address) as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        for bad in (version, "v1\r\n\x1b[31mforged"):
            code, details = code_of(stub.Search, cbir_pb2.ShardSearchRequest(
                vectors=query, dim=DIM, k=1, index_version=bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "index_version must be at most 128 printable characters" in details
            assert "AAAA" not in details and "forged" not in details and len(details) < 200
    assert_still_answers(real_cluster)


def test_huge_but_finite_vector_is_a_real_query(real_cluster: RealCluster) -> None:
    """[3e38] * D used to become a zero query (float32 norm overflow): it is the all-equal
    direction, so it answers like [1] * D."""
    with grpc.insecure_channel(real_cluster.coordinator.address) as channel:
        stub = cbir_pb2_grpc.CoordinatorStub(channel)

        def ids(value: float) -> list[int]:
            reply = stub.Search(cbir_pb2.SearchRequest(
                vector=cbir_pb2.FloatVector(values=[value] * DIM), k=5), timeout=10)
            return [h.image_id for h in reply.hits]

        assert ids(3e38) == ids(1.0)
        assert len(ids(3e38)) == 5
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(cbir_pb2.SearchRequest(
                vector=cbir_pb2.FloatVector(values=[1e39] * DIM), k=5), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # inf once in float32


def test_a_one_millisecond_deadline_is_deadline_exceeded(real_cluster: RealCluster) -> None:
    with grpc.insecure_channel(real_cluster.coordinator.address) as channel:
        stub = cbir_pb2_grpc.CoordinatorStub(channel)
        wait_serving(real_cluster.coordinator.address, timeout_s=10)  # connected
        for _ in range(5):
            code, _ = code_of(stub.Search, cbir_pb2.SearchRequest(
                vector=cbir_pb2.FloatVector(values=[1.0] * DIM), k=5), timeout=0.001)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "code=UNAVAILABLE" not in real_cluster.coordinator.log()
