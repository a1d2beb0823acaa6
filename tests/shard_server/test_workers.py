"""``cbir serve-shard --workers 2`` as a real process tree: one port (SO_REUSEPORT) whose new
connections reach both workers, answers equal to a 1-worker server's, a SIGKILLed worker
replaced while queries keep succeeding, SIGTERM draining every worker, and ``--workers 0``
refused with exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.rpc.health import wait_serving
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import serve_in_thread
from tests.shard_server.conftest import DIM, BuiltIndex, config

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = 24  # each a new TCP connection: all on one worker by chance = 2^-23


def _spawn(*args: str, **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "CBIR_LOG_LEVEL": "INFO", **env}
    return subprocess.Popen([sys.executable, "-m", "shard_server", *args], cwd=ROOT,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _call(address: str, method: str, request: object) -> object:
    """One RPC on a NEW connection (a fresh channel), so the kernel picks a worker. A
    connection the kernel queued on a worker as it was killed is reset: wait_for_ready makes
    the channel reconnect (to a live worker), as any gRPC client would retry."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) \
            as channel:
        return getattr(cbir_pb2_grpc.ShardStub(channel), method)(request, timeout=20,
                                                                 wait_for_ready=True)


def _pids(address: str, n: int = CONNECTIONS) -> set[int]:
    return {int(_call(address, "Stats", cbir_pb2.StatsRequest()).worker_pid)  # type: ignore
            for _ in range(n)}


@pytest.fixture(scope="module")
def two_workers(flat_index: BuiltIndex) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = _spawn("--index", flat_index.root, "--shard", "0", "--port", "0", "--workers", "2",
                  "--drain-seconds", "2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        address = line.split(" ")[-1]
        wait_serving(address, timeout_s=90)
        # Workers bind together once all have loaded: as soon as one serves, both do (the
        # first clients' connections must not all stick to the first worker loaded).
        _until("both workers serving right after the first", lambda: len(_pids(address)) == 2,
               timeout_s=5)
        yield proc, address
    finally:
        _stop(proc)


def _search(address: str, vectors: np.ndarray) -> tuple[list[int], np.ndarray]:
    reply = _call(address, "Search", cbir_pb2.ShardSearchRequest(
        vectors=vectors.astype("<f4").tobytes(), dim=DIM, k=5))
    return (np.frombuffer(reply.ids, "<i8").tolist(),  # type: ignore[attr-defined]
            np.frombuffer(reply.scores, "<f4"))  # type: ignore[attr-defined]


def test_two_workers_share_one_port_and_answer_like_one(
        two_workers: tuple[subprocess.Popen[str], str], flat_index: BuiltIndex) -> None:
    proc, address = two_workers
    pids = _pids(address)
    assert len(pids) == 2 and proc.pid not in pids  # both workers got connections
    queries = flat_index.vectors[flat_index.shard_rows(0)[:4]]
    with serve_in_thread(config(flat_index.root)) as single:
        want = _search(f"127.0.0.1:{single.port}", queries)
    answered_by: set[int] = set()
    for _ in range(12):  # new connections: both workers answer, identically
        ids, scores = _search(address, queries)
        assert ids == want[0]
        np.testing.assert_array_equal(scores, want[1])
        answered_by |= _pids(address, 1)
    assert answered_by <= pids


def test_a_killed_worker_is_replaced_while_queries_succeed(
        two_workers: tuple[subprocess.Popen[str], str], flat_index: BuiltIndex) -> None:
    _, address = two_workers
    before = _pids(address)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    query = flat_index.vectors[flat_index.shard_rows(0)[:1]]
    deadline = time.monotonic() + 90
    while True:  # every query on a new connection succeeds: the survivor takes them all
        ids, _ = _search(address, query)
        assert ids[0] == int(flat_index.ids[flat_index.shard_rows(0)[0]])
        now = _pids(address, 8)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        time.sleep(0.2)
    assert (before - {victim}) < now  # the survivor plus a new worker


def test_sigterm_drains_every_worker(flat_index: BuiltIndex) -> None:
    proc = _spawn("--index", flat_index.root, "--shard", "1", "--port", "0", "--workers", "2",
                  "--drain-seconds", "1")
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip().split(" ")[-1]
        wait_serving(address, timeout_s=90)
        deadline = time.monotonic() + 90
        while len(pids := _pids(address, 8)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "draining 2 workers" in err  # the parent forwarded SIGTERM...
    assert err.count(" draining (up to 1.0s)") == 2  # ...and each worker drained
    for pid in pids:  # the workers are gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_zero_workers_is_refused_with_exit_2(flat_index: BuiltIndex, how: str) -> None:
    args = ["--index", flat_index.root, "--shard", "0", "--port", "0"]
    proc = _spawn(*args, "--workers", "0") if how == "flag" else _spawn(*args, CBIR_WORKERS="0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "must be > 0" in lines[0], err


def _versions(address: str, n: int = 8) -> dict[int, str]:
    replies = [_call(address, "Stats", cbir_pb2.StatsRequest()) for _ in range(n)]
    return {int(r.worker_pid): str(r.index_version) for r in replies}  # type: ignore[attr-defined]


def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_load_index_on_one_worker_reaches_every_worker(flat_index: BuiltIndex,
                                                       flat_index_v2: BuiltIndex) -> None:
    """LoadIndex on the (shared) admin port lands on one worker; the others follow within a
    poll, and a worker started later (after a SIGKILL) serves the loaded version too."""
    root = str(Path(flat_index.root).parent.parent)  # both versions lie under pytest's base
    proc = _spawn("--index", flat_index.root, "--shard", "0", "--port", "0", "--workers", "2",
                  "--admin-port", "0", "--allowed-index-root", root, "--drain-seconds", "0")
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip().split(" ")[-1]
        admin = proc.stdout.readline().strip().split(" ")[-1]
        wait_serving(address, timeout_s=90)
        _until("two workers", lambda: len(_versions(address)) == 2)
        reply = _call(admin, "LoadIndex", cbir_pb2.LoadIndexRequest(index_uri=flat_index_v2.root))
        assert reply.index_version == flat_index_v2.version  # type: ignore[attr-defined]
        _until("every worker on v2", lambda: set(_versions(address, 12).values())
               == {flat_index_v2.version} and len(_versions(address)) == 2, 30)
        victim = min(_versions(address))
        os.kill(victim, signal.SIGKILL)
        _until("a replacement on v2", lambda: victim not in (v := _versions(address, 12))
               and len(v) == 2 and set(v.values()) == {flat_index_v2.version})
    finally:
        _stop(proc)
