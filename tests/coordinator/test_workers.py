"""``cbir serve-coordinator --workers 2`` as a real process tree in front of two real shard
servers: one port whose new connections reach both workers (each worker's own metrics count
searches), every answer equal to the exact top-k, SIGTERM drains both, ``--workers 0`` exits 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.rpc.health import check
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import serve_in_thread
from tests.shard_server.conftest import BuiltIndex, build, config

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "cbir.v1.Coordinator"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("coord-workers"), "v1", n=300)


@pytest.fixture(scope="module")
def topology(index: BuiltIndex, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_in_thread(config(index.root, shard=0)) as s0, \
            serve_in_thread(config(index.root, shard=1)) as s1:
        path = tmp_path_factory.mktemp("topo") / "topology.json"
        path.write_text(json.dumps({"shards": {"0": [f"127.0.0.1:{s0.port}"],
                                               "1": [f"127.0.0.1:{s1.port}"]}}))
        yield str(path)


def _two_free_ports() -> int:
    """p such that p and p + 1 are free now (worker i serves metrics on p + i)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no two consecutive free ports")


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CBIR_", "GRPC_"))}
    env.update(PYTHONPATH=str(ROOT), CBIR_LOG_LEVEL="INFO")
    return subprocess.Popen([sys.executable, "-m", "cbir.cli", "serve-coordinator", *args],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _search(address: str, query: np.ndarray) -> list[int]:
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) \
            as channel:  # a new connection per call
        reply = cbir_pb2_grpc.CoordinatorStub(channel).Search(cbir_pb2.SearchRequest(
            vector=cbir_pb2.FloatVector(values=query.tolist()), k=5), timeout=20,
            wait_for_ready=True)
    assert not reply.partial
    return [hit.image_id for hit in reply.hits]


def _searches_counted(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cbir_coordinator_requests_total{"))


def test_two_coordinator_workers_share_a_port(index: BuiltIndex, topology: str) -> None:
    metrics = _two_free_ports()
    proc = _spawn("--topology", topology, "--no-image-queries", "--port", "0", "--workers", "2",
                  "--metrics-port", str(metrics), "--drain-grace", "1")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        address = line.split(" ")[-1]
        deadline = time.monotonic() + 120
        while sum(check(address, SERVICE) for _ in range(8)) < 8:  # both workers ready
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        rng = np.random.default_rng(3)
        for row in rng.choice(len(index.ids), 24, replace=False):
            query = index.vectors[row]
            exact = index.ids[np.argsort(-(index.vectors @ query), kind="stable")[:5]]
            assert _search(address, query) == exact.tolist()
        assert _searches_counted(metrics) > 0 and _searches_counted(metrics + 1) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert proc.stderr.read().count("draining (grace 1.0 s)") == 2


def test_zero_coordinator_workers_exit_2(topology: str) -> None:
    proc = _spawn("--topology", topology, "--no-image-queries", "--port", "0", "--workers", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--workers: must be > 0" in err, err
