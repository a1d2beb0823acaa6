"""``python -m bench workers``: what ``serve-shard --workers N`` buys and costs.

(a) QPS of one shard server with 1 vs 2 workers under the same load: ``CONNECTIONS`` client
    connections (each its own channel, so SO_REUSEPORT can spread them), ``CONCURRENCY`` queries
    in flight, GloVe-50d Flat, k=10; the JSON also says how many connections each worker got.
    The client runs on the same machine: on 2 cores, client and workers share them.
(b) Memory per worker: per factory, two processes load the same shard the way two workers do,
    memory-mapped from one shared copy (``--index-cache-dir``, what ``--workers`` uses), while
    two more read it into their own memory (what two single servers would cost). Figures from
    ``/proc/<pid>/smaps_rollup`` while both are alive: Pss (shared pages split between them),
    Private (pages only this process has) and Shared, in MiB.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import cluster, harness
from bench.harness import K

log = logging.getLogger(__name__)

CONNECTIONS = 8
CONCURRENCY = 16
FACTORIES = ("Flat", "IVF64,Flat", "IVF64,SQ8", "IVF64,PQ10", "HNSW16")
SMAPS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty",
         "Anonymous")


def _sizes(quick: bool) -> tuple[int, int, float]:
    """(base vectors, queries, seconds of load per measurement)."""
    if harness.smoke():
        return 4000, 200, 2.0
    return (100_000, 1000, 8.0) if quick else (400_000, 2000, 15.0)


def _build(work: Path, vectors: np.ndarray, factory: str) -> str:
    from jobs.build_index.build import BuildConfig, build_index

    name = factory.replace(",", "_")
    emb = str(work / f"emb-{name}")
    cluster.write_embeddings_run(emb, vectors, name=name)
    out = str(work / f"index-{name}")
    build_index(BuildConfig(emb, out, 1, factory, target_recall=0.01, tune_queries=50,
                            train_size=20_000))
    return out


# ---------------------------------------------------------------------------- (a) QPS


async def _qps(address: str, queries: np.ndarray, duration_s: float) -> dict[str, Any]:
    import grpc

    from cbir.rpc.serving import channel_options
    from protos import cbir_pb2, cbir_pb2_grpc

    options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CONNECTIONS)]
    stubs = [cbir_pb2_grpc.ShardStub(c) for c in channels]
    pids = [(await s.Stats(cbir_pb2.StatsRequest(), timeout=10, wait_for_ready=True)).worker_pid
            for s in stubs]
    turn = iter(range(1 << 62))

    async def search(query: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(query.reshape(1, -1), dtype="<f4")
        reply = await stubs[next(turn) % len(stubs)].Search(
            cbir_pb2.ShardSearchRequest(vectors=q.tobytes(), dim=q.shape[1], k=K), timeout=10)
        return np.frombuffer(reply.ids, dtype="<i8")

    await harness.async_load(search, queries[:100], CONCURRENCY, 1.0)  # warm-up
    load = await harness.async_load(search, queries, CONCURRENCY, duration_s)
    for channel in channels:
        await channel.close()
    per_worker = sorted(pids.count(p) for p in set(pids))
    return {**load, "connections_per_worker": per_worker}


def measure_qps(index: str, queries: np.ndarray, duration_s: float) -> dict[str, Any]:
    from demo.processes import free_port

    out: dict[str, Any] = {}
    for workers in (1, 2):
        with cluster.Processes() as procs:
            address = f"127.0.0.1:{free_port()}"
            procs.start(f"shard-w{workers}", cluster.cbir_command(
                "serve-shard", "--index", index, "--shard", "0", "--host", "127.0.0.1",
                "--port", address.rsplit(":", 1)[1], "--workers", str(workers)))
            procs.wait_serving(address, "cbir.v1.Shard")
            out[f"workers_{workers}"] = asyncio.run(_qps(address, queries, duration_s))
    out["qps_ratio_2_over_1"] = harness.ratio(out["workers_2"]["qps"], out["workers_1"]["qps"])
    return out


# ---------------------------------------------------------------------------- (b) memory


def _smaps() -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].rstrip(":") in SMAPS:
            values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values


def _memory_child(index: str, cache_dir: str, queries: np.ndarray, barrier: Any,
                  results: Any) -> None:
    from shard_server.index_store import Expectations, load_shard
    from shard_server.live import live_search

    loaded = load_shard(index, 0, Expectations(), cache_dir)
    params = {"nprobe": 64, "ef_search": 64}  # every IVF list touched: all pages resident
    live_search(loaded.index, loaded.live.get(), queries, K, params)
    barrier.wait()  # all loaded: the mapped pages are shared now
    figures = _smaps()
    barrier.wait()
    results.put((cache_dir, figures))


def _processes(index: str, cache_dir: str, queries: np.ndarray
               ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Two processes mapping one cached copy and two reading it into memory, all alive at once
    (the in-memory pair maps nothing of the file, so the groups do not affect each other)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_memory_child, args=(index, where, queries, barrier, results))
             for where in (cache_dir, cache_dir, "", "")]
    for p in procs:
        p.start()
    figures = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return ([f for where, f in figures if where], [f for where, f in figures if not where])


def _summary(pair: list[dict[str, float]]) -> dict[str, float]:
    def mean(name: str) -> float:
        return round(sum(f.get(name, 0.0) for f in pair) / len(pair), 1)

    return {"rss_mib": mean("Rss"), "pss_mib": mean("Pss"),
            "private_mib": round(mean("Private_Clean") + mean("Private_Dirty"), 1),
            "shared_mib": round(mean("Shared_Clean") + mean("Shared_Dirty"), 1),
            "anonymous_mib": mean("Anonymous")}


def measure_memory(work: Path, vectors: np.ndarray, queries: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for factory in FACTORIES[:2] if harness.smoke() else FACTORIES:
        index = _build(work, vectors, factory)
        size = sum(p.stat().st_size for p in Path(index).rglob("index.faiss")) / 2**20
        cache = tempfile.mkdtemp(prefix="bench-cache-", dir=work)
        mapped_pair, read_pair = _processes(index, cache, queries)
        mapped, read = _summary(mapped_pair), _summary(read_pair)
        rows.append({"factory": factory, "index_mib": round(size, 1), "mmap": mapped,
                     "in_memory": read,
                     "pss_saved_per_worker_mib": round(read["pss_mib"] - mapped["pss_mib"], 1)})
        log.info("memory %s: %s", factory, rows[-1])
    return rows


def run(quick: bool) -> dict[str, Any]:
    n, n_queries, duration_s = _sizes(quick)
    data = harness.glove_set(n, n_queries)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        flat = _build(work, data.base, "Flat")
        qps = measure_qps(flat, data.queries, duration_s)
        memory = measure_memory(work, data.base, data.queries[:200])
    return {"dataset": {"base": n, "queries": n_queries, "dim": int(data.base.shape[1])},
            "load": {"connections": CONNECTIONS, "concurrency": CONCURRENCY,
                     "seconds": duration_s, "k": K},
            "qps": qps, "memory_per_worker": memory,
            "note": "client and workers share this machine's cores (2 here, shared with other "
                    "jobs): compare the ratio within one run, not absolute QPS"}
