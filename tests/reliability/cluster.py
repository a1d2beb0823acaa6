"""A real cluster on 127.0.0.1 for the reliability tests: ``cbir serve-shard`` SUBPROCESSES
(shards x replicas, each restartable on its own port), indexes built by the real build
(``jobs.build_index``, Flat over GloVe vectors), an in-process coordinator, and query load
from client threads that checks every answer against the exact top-k of the version it names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.ids import image_id
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from jobs.build_index.build import BuildConfig, build_index
from protos import cbir_pb2, cbir_pb2_grpc
from tests.build_index import fixtures as fx
from tests.coordinator.harness import LoopThread

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2
REPLICAS = 2
K = 10


@dataclass(frozen=True)
class Version:
    """One built index version and what it must answer."""

    root: str
    version: str
    ids: np.ndarray
    vectors: np.ndarray  # L2-normalised

    def top_k(self, query: np.ndarray, k: int = K) -> list[int]:
        scores = self.vectors @ query
        order = np.lexsort((self.ids, -scores))
        return [int(self.ids[i]) for i in order[:k]]

    def gap(self, query: np.ndarray, k: int = K) -> float:
        """Score gap at the k-th place: tiny gaps make the exact answer float-order dependent."""
        scores = np.sort(self.vectors @ query)[::-1]
        return float(scores[k - 1] - scores[k])


def build_version(tmp: Path, name: str, vectors: np.ndarray, bucket: str = "photos") -> Version:
    keys = fx.keys_for(len(vectors), bucket=bucket)
    emb = str(tmp / f"{name}-emb")
    fx.write_run(emb, fx.table(keys, vectors))
    top = build_index(BuildConfig(emb, str(tmp / name), SHARDS, "Flat", tune_queries=50))
    ids = np.array([image_id(k) for k in keys], dtype=np.int64)
    assert top is not None
    return Version(str(tmp / name), top.index_version, ids, vectors)


def query_pool(versions: Sequence[Version], n: int, seed: int = 5) -> np.ndarray:
    """Perturbed stored vectors whose top-k is unambiguous in every version."""
    rng = np.random.default_rng(seed)
    base = versions[0].vectors
    out: list[np.ndarray] = []
    while len(out) < n:
        q = base[rng.integers(len(base))] + 0.3 * rng.standard_normal(base.shape[1])
        q = (q / np.linalg.norm(q)).astype(np.float32)
        if all(v.gap(q) > 1e-4 for v in versions):
            out.append(q)
    return np.stack(out)


class ShardProcess:
    """One ``python -m shard_server`` replica; restartable on the port it first bound."""

    def __init__(self, shard: int, source: list[str], log_dir: Path, extra: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.shard = shard
        self.source = source  # ["--index", URI] or ["--index-pointer", URI, ...]
        self.extra = list(extra)
        self.port = 0
        self.log_dir = log_dir
        self.env = {**os.environ, "CBIR_LOG_LEVEL": "INFO", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ShardProcess:
        self.starts += 1
        log = (self.log_dir / f"shard{self.shard}-{id(self):x}-{self.starts}.log").open("w")
        cmd = [sys.executable, "-m", "shard_server", *self.source, "--shard", str(self.shard),
               "--port", str(self.port), "--drain-seconds", "1", *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=log, text=True)
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.wait(10)
            raise RuntimeError(f"shard {self.shard} did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def logs(self) -> str:
        files = sorted(self.log_dir.glob(f"shard{self.shard}-{id(self):x}-*.log"))
        return "".join(p.read_text() for p in files)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def wait_serving(self, timeout_s: float = 60.0,
                     channel_factory: Callable[[str], grpc.Channel] | None = None) -> None:
        end = time.monotonic() + timeout_s
        request = health_pb2.HealthCheckRequest(service="cbir.v1.Shard")
        factory = channel_factory or grpc.insecure_channel
        with factory(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < end:
                assert self.proc is not None and self.proc.poll() is None, "replica exited"
                try:
                    status = stub.Check(request, timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"replica {self.address} of shard {self.shard} never SERVING")


def start_replicas(make: Callable[[int], ShardProcess]) -> list[list[ShardProcess]]:
    """SHARDS x REPLICAS processes started in parallel, all SERVING."""
    replicas = [[make(s) for _ in range(REPLICAS)] for s in range(SHARDS)]
    flat = [r for row in replicas for r in row]
    for r in flat:
        r.start()
    for r in flat:
        r.wait_serving()
    return replicas


class Coordinator:
    """An in-process coordinator (own event loop thread) over the replicas."""

    def __init__(self, replicas: list[list[ShardProcess]], **overrides: object) -> None:
        self.loop = LoopThread()
        topology = StaticTopology({s: tuple(r.address for r in row)
                                   for s, row in enumerate(replicas)})
        settings: dict[str, object] = {
            "num_shards": SHARDS, "port": 0, "image_queries": False, "resolve_interval_s": 1.0,
            "version_interval_s": 0.3, "balancer": BalancerConfig(reprobe_interval_s=0.2),
        }
        config = CoordinatorConfig(**{**settings, **overrides})  # type: ignore[arg-type]
        self.server = self.loop.run(self._make(config, topology))
        self.port = self.loop.run(self.server.start())
        self.loop.run(self.server.ready.wait(), timeout=60)

    async def _make(self, config: CoordinatorConfig, topology: StaticTopology) -> CoordinatorServer:
        return CoordinatorServer(config, topology, embedder_factory=None)

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in self.server.metrics.registry.collect():
            for sample in family.samples:
                wanted = all(sample.labels.get(k) == v for k, v in labels.items())
                if sample.name == name and wanted:
                    total += sample.value
        return total

    def close(self) -> None:
        self.loop.run(self.server.stop(0))
        self.loop.close()


@dataclass
class LoadReport:
    queries: int = 0
    failed: int = 0
    partial: int = 0
    wrong: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    # (monotonic send time, index version) of every answer, to count a phase by the
    # queries SENT in it: one sent just before a switch may rightly answer in the old one.
    sent_versions: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class QueryLoad:
    """Client threads sending vector queries to the coordinator until stopped; every answer
    is checked against the exact top-k of the version it says it came from."""

    def __init__(self, port: int, pool: np.ndarray, versions: Sequence[Version],
                 threads: int = 4, deadline_s: float = 10.0,
                 channel_factory: Callable[[str], grpc.Channel] | None = None) -> None:
        self.address = f"127.0.0.1:{port}"
        self.pool = pool
        self.expected = {v.version: [v.top_k(q) for q in pool] for v in versions}
        self.deadline_s = deadline_s
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._factory = channel_factory or grpc.insecure_channel
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> QueryLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadReport:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.report

    def versions_sent_since(self, t: float) -> Counter[str]:
        with self._lock:
            return Counter(v for sent, v in self.report.sent_versions if sent >= t)

    def wait_for(self, queries: int, timeout_s: float = 120.0) -> None:
        end = time.monotonic() + timeout_s
        while self.report.queries < queries and time.monotonic() < end:
            time.sleep(0.05)

    def _run(self, worker: int) -> None:
        with self._factory(self.address) as channel:
            stub = cbir_pb2_grpc.CoordinatorStub(channel)
            i = worker
            while not self._stop.is_set():
                row = i % len(self.pool)
                i += len(self._threads)
                self._one(stub, row)

    def _one(self, stub: cbir_pb2_grpc.CoordinatorStub, row: int) -> None:
        request = cbir_pb2.SearchRequest(
            vector=cbir_pb2.FloatVector(values=self.pool[row].tolist()), k=K)
        sent = time.monotonic()
        try:
            reply = stub.Search(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            self._record(failed=f"{exc.code().name}: {exc.details()}")
            return
        got = [h.image_id for h in reply.hits]
        expected = self.expected.get(reply.index_version)
        wrong = expected is None or got != expected[row]
        self._record(version=reply.index_version, partial=reply.partial, wrong=wrong,
                     detail=f"row {row} version {reply.index_version} partial={reply.partial}",
                     sent=sent)

    def _record(self, failed: str = "", version: str = "", partial: bool = False,
                wrong: bool = False, detail: str = "", sent: float = 0.0) -> None:
        with self._lock:
            r = self.report
            r.queries += 1
            if failed:
                r.failed += 1
                r.errors.append(failed)
                return
            r.by_version[version] += 1
            r.sent_versions.append((sent, version))
            r.partial += partial
            r.wrong += wrong
            if (partial or wrong) and len(r.errors) < 20:
                r.errors.append(detail)
