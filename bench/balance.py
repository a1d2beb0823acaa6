"""Load balancing: one shard, two replicas (two ``cbir serve-shard`` processes on the same index),
one of them made slow; the coordinator's balancer (power-of-two-choices on in-flight x latency
EWMA) against plain round-robin, measured in one run.

The slow replica is made by a bench-local gRPC proxy that forwards raw bytes to a real replica
and sleeps ``delay_ms`` before each ``Search`` (the shard server has no delay option, and the
servers stay unmodified). Every replica is reached through a proxy, delayed or not, so all four
scenarios pay the same extra hop:

    healthy: [proxy 0 ms -> A, proxy 0 ms -> B]      slow: [proxy 0 ms -> A, proxy D ms -> B]

Round-robin is the real coordinator started with ``--balancer round-robin`` (a plain cycle over
the live replicas, ``--no-adaptive-hedge``: plain round-robin as before; same ejection and
retries). Each replica's ``Stats.queries_served`` before and after a scenario gives the share
of queries that went to the slow one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from bench import cluster, harness

log = logging.getLogger(__name__)

DELAY_MS = 50.0


# ---------------------------------------------------------------------------- child processes


class DelayProxy(grpc.GenericRpcHandler):
    """Forwards every unary call as raw bytes; sleeps before ``Search`` calls."""

    def __init__(self, target: str, delay_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._delay_s = delay_s

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method
        upstream = self._channel.unary_unary(method)
        delay_s = self._delay_s if method.endswith("/Search") else 0.0

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if delay_s:
                await asyncio.sleep(delay_s)
            try:
                return await upstream(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise

        return grpc.unary_unary_rpc_method_handler(forward)


async def serve_proxies(specs: list[str]) -> None:
    """``LISTEN_PORT=TARGET@DELAY_MS`` each; runs until killed. One server per proxy: a
    server's generic handlers answer on all of its ports."""
    servers = []
    for spec in specs:
        port, rest = spec.split("=", 1)
        target, delay = rest.split("@", 1)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((DelayProxy(target, float(delay) / 1000.0),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    await asyncio.gather(*(s.wait_for_termination() for s in servers))


def main(argv: list[str]) -> int:
    """Child entry point: ``proxy SPEC...``."""
    logging.basicConfig(level=logging.WARNING)
    if argv and argv[0] == "proxy":
        asyncio.run(serve_proxies(argv[1:]))
        return 0
    print("usage: python -m bench.balance proxy SPEC...", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- the benchmark

SCENARIOS = (("balancer", "healthy"), ("round_robin", "healthy"),
             ("balancer", "slow"), ("round_robin", "slow"))


async def _served(address: str) -> int:
    from protos import cbir_pb2, cbir_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stats = await cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5)
    return int(stats.queries_served)


async def measure_scenario(coordinator: str, replicas: tuple[str, str], data: harness.VectorSet,
                           concurrency: int, load_s: float) -> dict[str, Any]:
    client = cluster.CoordinatorSearchClient(coordinator, harness.K)
    try:
        for q in data.queries[:50]:  # warm-up: connections open, latency estimates learnt
            await client.search(q)
        before = [await _served(r) for r in replicas]
        load = await harness.async_load(client.search, data.queries, concurrency, load_s)
        after = [await _served(r) for r in replicas]
    finally:
        await client.close()
    served = [b - a for a, b in zip(before, after, strict=True)]
    load["share_to_replica_b"] = round(served[1] / max(1, sum(served)), 3)
    load["partial_answers"] = client.partial
    return load


def _start_coordinators(procs: cluster.Processes, topologies: dict[str, str]
                        ) -> dict[tuple[str, str], str]:
    rr = [*cluster.cbir_command("serve-coordinator"), "--balancer", "round-robin",
          "--no-adaptive-hedge"]
    out = {}
    for policy, health in SCENARIOS:
        command = rr if policy == "round_robin" else None
        out[(policy, health)] = cluster.start_coordinator(
            procs, topologies[health], f"coordinator-{policy}-{health}", command)
    return out


def _cluster_run(work: Path, index: str, data: harness.VectorSet, concurrency: int,
                 load_s: float) -> dict[str, dict[str, Any]]:
    with cluster.Processes() as procs:
        a, b = (cluster.start_shard(procs, index, 0, f"replica-{n}") for n in "ab")
        pa0, pb0, pbd = (f"127.0.0.1:{cluster.free_port()}" for _ in range(3))
        procs.start("proxies", [sys.executable, "-m", "bench.balance", "proxy",
                                f"{pa0.rsplit(':', 1)[1]}={a}@0", f"{pb0.rsplit(':', 1)[1]}={b}@0",
                                f"{pbd.rsplit(':', 1)[1]}={b}@{DELAY_MS}"])
        topologies = {
            "healthy": cluster.write_topology(work / "healthy.json", {0: [pa0, pb0]}),
            "slow": cluster.write_topology(work / "slow.json", {0: [pa0, pbd]}),
        }
        coordinators = _start_coordinators(procs, topologies)
        for address in (a, b, pa0, pb0, pbd):
            procs.wait_serving(address, cluster.SHARD_SERVICE)
        for address in coordinators.values():
            procs.wait_serving(address, cluster.COORDINATOR_SERVICE)

        async def measure_all() -> dict[str, dict[str, Any]]:
            return {f"{policy}_{health}": await measure_scenario(
                        coordinators[(policy, health)], (a, b), data, concurrency, load_s)
                    for policy, health in SCENARIOS}

        return asyncio.run(measure_all())


def run(quick: bool) -> dict[str, Any]:
    n_base, n_queries, factory = (20_000, 300, "IVF128,Flat") if quick else (
        100_000, 1000, "IVF512,Flat")
    concurrency, load_s = 8, (4.0 if quick else 8.0)
    data = harness.glove_set(n_base, n_queries)
    work = Path(tempfile.mkdtemp(prefix="bench-balance-"))
    cluster.write_embeddings_run(str(work / "embeddings"), data.base)
    cluster.run_cbir("build-index", "--embeddings", str(work / "embeddings"), "--output",
                     str(work / "index"), "--shards", "1", "--index", factory,
                     "--engine", "sequential")
    results = _cluster_run(work, str(work / "index"), data, concurrency, load_s)
    bal_h, bal_s = results["balancer_healthy"], results["balancer_slow"]
    rr_s = results["round_robin_slow"]
    return {
        "dataset": {"name": data.name, "base": len(data.base)}, "factory": factory,
        "replicas": 2, "slow_replica_delay_ms": DELAY_MS, "concurrency": concurrency,
        "load_s": load_s, "scenarios": results,
        "ratios": {
            "balancer_slow_over_healthy_p99": harness.ratio(bal_s["p99_ms"], bal_h["p99_ms"]),
            "balancer_over_round_robin_slow_p99": harness.ratio(bal_s["p99_ms"], rr_s["p99_ms"]),
            "balancer_over_round_robin_slow_qps": harness.ratio(bal_s["qps"], rr_s["qps"]),
        },
        "targets": {
            "balancer_slow_p99_vs_healthy": harness.target(
                bal_s["p99_ms"], "<=", round(1.5 * bal_h["p99_ms"], 3),
                "balancer p99 with one slow replica <= 1.5 x its p99 with both healthy"),
            "balancer_vs_round_robin_slow_p99": harness.target(
                bal_s["p99_ms"], "<", rr_s["p99_ms"],
                "balancer p99 with one slow replica < round-robin's"),
        },
        "table": [{"case": name, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                   "qps_load": r["qps"], "share_to_b": r["share_to_replica_b"]}
                  for name, r in results.items()],
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
