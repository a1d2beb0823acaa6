"""The shard server as a real process (`python -m shard_server`): port-0 announcement, health,
search, SIGTERM drain, and a clean error for a missing index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from cbir.rpc.health import wait_serving
from protos import cbir_pb2, cbir_pb2_grpc
from tests.shard_server.conftest import DIM, BuiltIndex

ROOT = Path(__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CBIR_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "shard_server", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_subprocess_serves_then_drains_on_sigterm(flat_index: BuiltIndex) -> None:
    proc = _spawn("--index", flat_index.root, "--shard", "1", "--port", "0",
                  "--drain-seconds", "2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cbir_pb2_grpc.ShardStub(channel)
            rows = flat_index.shard_rows(1)[:2]
            resp = stub.Search(cbir_pb2.ShardSearchRequest(
                vectors=flat_index.vectors[rows].tobytes(), dim=DIM, k=1), timeout=10)
            assert np.frombuffer(resp.ids, "<i8").tolist() == flat_index.ids[rows].tolist()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "draining" in proc.stderr.read()


def test_subprocess_missing_index_exits_with_a_clear_error(tmp_path: Path) -> None:
    proc = _spawn("--index", str(tmp_path / "none"), "--shard", "0", "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cbir serve-shard: error: no index for shard 0" in err
    assert "Traceback" not in err
