"""What a request's outcome is called, in the status code and in the access log, and where the
coordinator's side endpoints listen (real coordinator over real gRPC fake replicas)."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.errors import BadImage
from protos import cbir_pb2, cbir_pb2_grpc
from tests.conftest import free_port
from tests.coordinator.harness import DIM, FakeEmbedder, LoopThread, start_cluster, wait_for


def test_a_cancelled_query_is_logged_as_cancelled(
    loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = start_cluster(loop_thread)
    try:
        for replicas in cluster.replicas:
            for r in replicas:
                r.servicer.delay_s = 2.0
        caplog.set_level(logging.INFO, logger="coordinator.access")
        with grpc.insecure_channel(cluster.address) as channel:
            stub = cbir_pb2_grpc.CoordinatorStub(channel)
            call = stub.Search.future(cbir_pb2.SearchRequest(
                vector=cbir_pb2.FloatVector(values=[1.0] * DIM), k=3, request_id="gone-1"),
                timeout=10)
            time.sleep(0.3)  # the coordinator is waiting on its shards
            call.cancel()
        assert wait_for(lambda: any("request_id=gone-1" in r.getMessage()
                                    for r in caplog.records), 10)
        line = next(r.getMessage() for r in caplog.records if "gone-1" in r.getMessage())
        assert "code=CANCELLED" in line, line
    finally:
        cluster.close()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_metrics_listen_on_the_servers_host_only(loop_thread: LoopThread) -> None:
    metrics_port = free_port()
    cluster = start_cluster(loop_thread, host="127.0.0.1", metrics_port=metrics_port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            body = r.read()
        assert b"cbir_coordinator" in body
        # The process's own memory and CPU are exported next to the server's metrics.
        assert b"process_resident_memory_bytes" in body and b"process_cpu_seconds_total" in body
        # 127.0.0.2 is the same loopback device: only a 0.0.0.0 listener would answer there.
        assert not _connects("127.0.0.2", metrics_port)
    finally:
        cluster.close()


class SlowEmbedder(FakeEmbedder):
    def embed_batch(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        time.sleep(0.3)
        return super().embed_batch(images)


def test_a_full_embed_queue_answers_resource_exhausted(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, embedder=SlowEmbedder(), embed_max_queued=2)
    try:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = cbir_pb2_grpc.CoordinatorStub(channel)
            calls = [stub.Search.future(cbir_pb2.SearchRequest(
                image=b"\x89PNG burst %d" % i, k=3), timeout=20) for i in range(12)]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
                    assert "the query embedder is overloaded" in err.details()
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
            # 1 in the embedder + at most 2 queued at any moment; the rest were refused at once.
            assert codes.count(grpc.StatusCode.OK) >= 3
            reply = stub.Search(cbir_pb2.SearchRequest(image=b"\x89PNG after", k=3), timeout=20)
            assert len(reply.hits) == 3
        assert _serving(cluster.address)
    finally:
        cluster.close()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING
