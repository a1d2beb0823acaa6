"""Health, reflection, readiness, DNS discovery through a real DNS server, and the
``cbir serve-coordinator`` process (SIGTERM drain, metrics endpoint)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cbir.client import CoordinatorClient
from cbir.errors import FailedPrecondition, InvalidArgument, Unavailable
from coordinator.cli import add_arguments, build_config
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import DnsTopology, StaticTopology, dnspython_resolver
from tests.conftest import free_port
from tests.coordinator.harness import (
    DIM,
    Cluster,
    FakeReplica,
    FakeShardServicer,
    LoopThread,
    TinyDnsServer,
    flat_top_k,
    make_dataset,
    split,
    start_cluster,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def health_status(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def test_health_and_reflection_answer(cluster: Cluster) -> None:
    for service in ("", "cbir.v1.Coordinator"):
        assert health_status(cluster.address, service) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(cluster.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"cbir.v1.Coordinator", "grpc.health.v1.Health"} <= names


def test_not_serving_until_a_shard_reports(loop_thread: LoopThread) -> None:
    dead: dict[int, tuple[str, ...]] = {0: (f"127.0.0.1:{free_port()}",)}
    config = CoordinatorConfig(num_shards=1, port=0, resolve_interval_s=0.1)

    async def start() -> CoordinatorServer:
        server = CoordinatorServer(config, StaticTopology(dead), None)
        await server.start()
        return server

    server = loop_thread.run(start())
    try:
        address = f"127.0.0.1:{server.port}"
        time.sleep(0.5)
        assert health_status(address, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        with CoordinatorClient(address) as client, pytest.raises(Unavailable, match="not ready"):
            client.search_vector(np.ones(DIM), k=3)
    finally:
        loop_thread.run(server.stop(0))


def test_image_queries_can_be_turned_off(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread)
    cluster.coordinator.state.image_queries = False
    try:
        with CoordinatorClient(cluster.address) as client, \
                pytest.raises(FailedPrecondition, match="image queries are disabled"):
            client.search_image(b"\x89PNG x", k=3)
    finally:
        cluster.close()


def test_dns_discovery_follows_scaling(loop_thread: LoopThread) -> None:
    """Replicas on 127.0.0.2.. share one port; a real UDP DNS server answers A records."""
    port = free_port()
    data = make_dataset()
    parts = split(data, 2)
    hosts = {"127.0.0.2": 0, "127.0.0.3": 0, "127.0.0.4": 1}
    replicas = {h: FakeReplica(FakeShardServicer(s, 2, parts[s]), h, port)
                for h, s in hosts.items()}
    for r in replicas.values():
        loop_thread.run(r.start())
    dns = TinyDnsServer({"shard-0.cbir.test": ["127.0.0.2"], "shard-1.cbir.test": ["127.0.0.4"]})
    config = CoordinatorConfig(
        num_shards=2, port=0, shard_dns=f"shard-{{shard}}.cbir.test:{port}",
        dns_server=f"127.0.0.1:{dns.port}", resolve_interval_s=0.2,
        balancer=BalancerConfig(reprobe_interval_s=0.2),
    )

    async def start() -> CoordinatorServer:
        source = DnsTopology(config.shard_dns or "", 2, dnspython_resolver(config.dns_server))
        server = CoordinatorServer(config, source, None)
        await server.start()
        await asyncio.wait_for(server.ready.wait(), 10)
        return server

    server = loop_thread.run(start())
    try:
        with CoordinatorClient(f"127.0.0.1:{server.port}") as client:
            assert client.info().live_replicas == {0: 1, 1: 1}
            dns.records["shard-0.cbir.test"] = ["127.0.0.2", "127.0.0.3"]  # scale up
            assert wait_for(lambda: client.info().live_replicas == {0: 2, 1: 1}, 5)
            dns.records["shard-0.cbir.test"] = ["127.0.0.3"]  # the first pod goes away
            assert wait_for(lambda: client.info().live_replicas == {0: 1, 1: 1}, 5)
            loop_thread.run(replicas["127.0.0.2"].stop(0))
            for i in range(10):
                result = client.search_vector(data.vectors[i], k=5)
                assert not result.partial
                assert [h.image_id for h in result.hits] == flat_top_k(data, data.vectors[i], 5)
            assert replicas["127.0.0.3"].servicer.searches >= 10
    finally:
        loop_thread.run(server.stop(0))
        for r in replicas.values():
            loop_thread.run(r.stop(0))
        dns.close()


def test_cli_flags_build_the_config(tmp_path: Path) -> None:
    import argparse

    topo = tmp_path / "t.json"
    topo.write_text(json.dumps({"shards": {"0": ["h:1"], "1": ["h:2"]}}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args(
        ["--topology", str(topo), "--hedge-after-ms", "30", "--deadline-ms", "2500",
         "--no-image-queries", "--reprobe-interval", "0.5"]))
    assert (config.num_shards, config.hedge_after_ms, config.image_queries) == (2, 30.0, False)
    assert config.limits.default_deadline_s == 2.5
    assert config.balancer.reprobe_interval_s == 0.5
    with pytest.raises(InvalidArgument, match="needs --shards"):
        build_config(parser.parse_args(["--shard-dns", "s-{shard}:1"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--topology", str(topo), "--shard-dns", "x"])


@pytest.mark.slow
def test_serve_coordinator_process_answers_and_drains_on_sigterm(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    data = make_dataset()
    parts = split(data, 2)
    replicas = [FakeReplica(FakeShardServicer(s, 2, parts[s])) for s in range(2)]
    for r in replicas:
        loop_thread.run(r.start())
    topo = tmp_path / "topology.json"
    topo.write_text(json.dumps({"shards": {str(s): [r.address] for s, r in enumerate(replicas)}}))
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir.cli", "serve-coordinator", "--topology", str(topo),
         "--port", str(port), "--no-image-queries", "--metrics-port", str(metrics_port)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _serving(address), 30), "coordinator never became SERVING"
        with CoordinatorClient(address) as client:
            result = client.search_vector(data.vectors[0], k=4)
        assert [h.image_id for h in result.hits] == flat_top_k(data, data.vectors[0], 4)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert 'cbir_coordinator_requests_total{code="OK",query="vector"} 1.0' in (
                r.read().decode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for r in replicas:
            loop_thread.run(r.stop(0))


def _serving(address: str) -> bool:
    try:
        return health_status(address, "") == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
