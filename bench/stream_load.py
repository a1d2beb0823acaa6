"""A load generator for a fixed stream of coordinator queries that does not starve the server:
several client processes, each with its own event loop and a share of the queries in flight,
sending requests serialized once up front.

Why: one Python asyncio client spends about as much CPU per unary call as the coordinator
spends answering a cached query, so on a 2-core machine a single client process caps the
cache-on QPS near its own limit (the cache-off path, which also pays the shards, hides this).
The stream stays in order: process p sends items p, p + P, p + 2P, ... so every process walks
the same Zipf stream at the same pace. Every reply is parsed (a real client reads its answer).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import harness

SEARCH_METHOD = "/cbir.v1.Coordinator/Search"


@dataclass(frozen=True)
class Slice:
    """One client process's share of a stream."""

    address: str
    requests: list[bytes]  # serialized SearchRequest per pool item
    items: list[int]  # this process's items of the stream, in order
    concurrency: int
    start_at: float  # time.time() at which every process starts sending
    max_s: float


def drive(part: Slice) -> dict[str, Any]:
    """Run in a client process: send ``part.items`` with ``part.concurrency`` in flight."""
    return asyncio.run(_drive(part))


async def _drive(part: Slice) -> dict[str, Any]:
    import grpc

    from cbir.rpc.serving import channel_options
    from protos import cbir_pb2

    async with grpc.aio.insecure_channel(part.address, options=channel_options()) as channel:
        # request_serializer=None: the bytes are sent as they are (serialized once, up front).
        search = channel.unary_unary(SEARCH_METHOD, request_serializer=None,
                                     response_deserializer=cbir_pb2.SearchResponse.FromString)
        await search(part.requests[part.items[0]], timeout=30)  # connect before the clock
        await asyncio.sleep(max(0.0, part.start_at - time.time()))
        samples: list[float] = []
        position = [0]
        stop_at = time.monotonic() + part.max_s

        async def worker() -> None:
            while position[0] < len(part.items) and time.monotonic() < stop_at:
                request = part.requests[part.items[position[0]]]
                position[0] += 1
                t0 = time.perf_counter()
                await search(request, timeout=30)
                samples.append(time.perf_counter() - t0)

        started, cpu = time.time(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(part.concurrency)))
        return {"samples": samples, "started": started, "ended": time.time(),
                "cpu_s": time.process_time() - cpu}


class StreamLoad:
    """A pool of ``processes`` spawned client processes, reused for several streams."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        # spawn, not fork: the parent already runs grpc (health checks), which fork breaks.
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    def __enter__(self) -> StreamLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, address: str, requests: list[bytes], stream: np.ndarray, concurrency: int,
            max_s: float, servers: dict[str, list[int]] | None = None) -> Sent:
        """Every item of ``stream`` once, ``concurrency`` in flight over all processes.
        ``servers``: role -> pids whose CPU seconds the run is charged (read from /proc)."""
        before = {role: sum(map(process_cpu_s, pids)) for role, pids in (servers or {}).items()}
        start_at = time.time() + 1.0  # every process connected and waiting
        per_process = max(1, concurrency // self.processes)
        parts = [Slice(address, requests, stream[p::self.processes].tolist(), per_process,
                       start_at, max_s) for p in range(self.processes)]
        results = list(self._pool.map(drive, parts))
        cpu = {role: sum(map(process_cpu_s, (servers or {})[role])) - was
               for role, was in before.items()}
        cpu["clients"] = sum(r["cpu_s"] for r in results)
        return Sent([s for r in results for s in r["samples"]],
                    max(r["ended"] for r in results) - min(r["started"] for r in results),
                    per_process * self.processes, cpu)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sent:
    """What one or more ``StreamLoad.run`` calls sent: latencies and the seconds it took."""

    samples: list[float]
    elapsed_s: float
    concurrency: int
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds used

    def add(self, other: Sent) -> None:
        self.samples += other.samples
        self.elapsed_s += other.elapsed_s
        self.concurrency = other.concurrency
        for role, seconds in other.cpu_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seconds

    def summary(self, processes: int) -> dict[str, Any]:
        """QPS and latency, and CPU milliseconds per query by role: on a machine shared with
        other work, QPS depends on the share of the cores each process gets; CPU per query
        does not (much)."""
        n = max(len(self.samples), 1)
        cpu = {role: round(s * 1e3 / n, 3) for role, s in self.cpu_s.items()}
        return {**harness.percentiles_ms(self.samples),
                "qps": round(len(self.samples) / self.elapsed_s, 1),
                "queries": len(self.samples), "client_processes": processes,
                "concurrency": self.concurrency,
                "cpu_ms_per_query": {**cpu, "total": round(sum(cpu.values()), 3)}}


def cache_lookups(metrics_address: str) -> dict[str, float]:
    """The coordinator's result-cache hit and miss counts, from its Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "cbir_coordinator_cache_lookups_total"
                    and sample.labels.get("cache") == "result"):
                counts[sample.labels["result"]] += sample.value
    return counts
