"""The server commands as processes: a port in use is one line and exit 2 (serve-shard and
serve-coordinator), an unknown model is refused before anything starts, and the coordinator
prints the port it bound (like the shard) so ``--port 0`` is usable from scripts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]


def cbir(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CBIR_", "GRPC_"))}
    return subprocess.run([sys.executable, "-m", "cbir.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process-like listener holds for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def topology(tmp_path: Path) -> str:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"shards": {"0": ["127.0.0.1:1"]}}))
    return str(path)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_serve_shard_port_in_use(taken_port: int, tmp_path: Path) -> None:
    done = cbir("serve-shard", "--index", str(tmp_path), "--shard", "0",
                "--port", str(taken_port))
    line = one_error_line(done)
    assert line == (f"cbir serve-shard: error: cannot listen on 127.0.0.1:{taken_port}: the port "
                    f"is in use (another server? pick another --port, or 0 for any free port)")


def test_serve_shard_metrics_port_in_use(taken_port: int, tmp_path: Path) -> None:
    done = cbir("serve-shard", "--index", str(tmp_path), "--shard", "0", "--port", "0",
                "--metrics-port", str(taken_port))
    assert f"cannot listen on 127.0.0.1:{taken_port}: the port is in use" in one_error_line(done)


def test_serve_coordinator_port_in_use(taken_port: int, topology: str) -> None:
    done = cbir("serve-coordinator", "--topology", topology, "--no-image-queries",
                "--port", str(taken_port))
    assert f"cannot listen on 127.0.0.1:{taken_port}: the port is in use" in one_error_line(done)


def test_serve_coordinator_unknown_host(topology: str) -> None:
    done = cbir("serve-coordinator", "--topology", topology, "--no-image-queries",
                "--host", "no-such-host.invalid", "--port", "0")
    assert "cannot listen on no-such-host.invalid:0: unknown host" in one_error_line(done)


def test_serve_coordinator_unknown_model_exits_at_once(topology: str) -> None:
    done = cbir("serve-coordinator", "--topology", topology, "--model", "vgg16", timeout=30)
    line = one_error_line(done)
    assert "argument --model: invalid choice: 'vgg16'" in line and "efficientnet_lite0" in line


def test_serve_coordinator_prints_its_bound_port(topology: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBIR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir.cli", "serve-coordinator", "--topology", topology,
         "--no-image-queries", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)  # a real server is there
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
