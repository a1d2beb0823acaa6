"""The shard server as a real process (`python -m shard_server`): port-0 announcement, health,
search, SIGTERM drain, a clean error for a missing index, and a pointer follower with an admin
port facing a hostile pointer file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

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


def _wait_for(path: Path, text: str, timeout_s: float = 60.0) -> str:
    end = time.monotonic() + timeout_s
    while text not in (content := path.read_text(errors="replace")):
        assert time.monotonic() < end, f"no {text!r} in the log:\n{content}"
        time.sleep(0.1)
    return content


def test_pointer_follower_with_admin_port_and_hostile_pointer(flat_index: BuiltIndex,
                                                              tmp_path: Path) -> None:
    """A real process: announces its loopback admin port, refuses a manual LoadIndex there (the
    pointer is authoritative), and a pointer file full of CR / ANSI escapes reaches its log
    only as a description, never raw."""
    pointer = tmp_path / "CURRENT"
    pointer.write_text(flat_index.root + "\n")
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log_file:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CBIR_LOG_LEVEL": "INFO"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "shard_server", "--index-pointer", str(pointer),
             "--allowed-index-root", str(Path(flat_index.root).parent), "--shard", "0",
             "--port", "0", "--admin-port", "0", "--pointer-interval", "0.2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        admin = proc.stdout.readline().strip()
        assert admin.startswith("admin listening on 127.0.0.1:"), admin
        wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        with grpc.insecure_channel(admin.rsplit(" ", 1)[1]) as channel, \
                pytest.raises(grpc.RpcError) as info:
            cbir_pb2_grpc.ShardStub(channel).LoadIndex(
                cbir_pb2.LoadIndexRequest(index_uri=flat_index.root), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        pointer.write_text("s3://evil/v2\r\x1b[2K\x1b[31mFAKE: all good\x1b[0m\x9b1m\n")
        log = _wait_for(log_path, "holds control characters")
        assert "\x1b" not in log and "\r" not in log and "\x9b" not in log
        assert "FAKE" not in log  # described, not quoted
        time.sleep(1.0)  # five more polls: counted, not logged again
        assert log_path.read_text().count("holds control characters") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
