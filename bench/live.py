"""Live index: write throughput, visibility lag and the delta's cost to search.

(a) Upserts/s by vector through ``cbir serve-coordinator --wal`` (one item per request, and
    batches of 64), over 1 shard x 2 replicas (``cbir serve-shard --wal``), log on local disk;
    and by image: JPEG edits of the demo photos sent as bytes to a coordinator that embeds them
    with the real model (EfficientNet-Lite0; its own 1-shard index of the photos' embeddings),
    one image per request and batches of 8.
(b) Visibility lag: write acknowledged -> returned as the top hit by a raw ``Shard/Search`` on
    EVERY replica (p50/p99; target p99 <= 1 s on 127.0.0.1).
(c) Search QPS of the shard's live search path (``shard_server.live.live_search``: base with
    the tombstone selector + exact delta, merged) with a delta of 0 / 10k / 100k vectors,
    relative to the plain base search (no live view); single queries, in process, on the very
    ``index.faiss`` the build wrote (target: 10k delta >= 0.8 x none)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench import cluster, harness
from cbir import index_layout
from cbir.client import AsyncCoordinatorClient, UpsertSpec
from cbir.faiss_params import search_parameters
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest
from cbir.wal import LogEntry, Upsert
from demo.processes import cbir_command, free_port
from shard_server.live import limit_numpy_blas_threads, live_search
from shard_server.segments import LiveView

log = logging.getLogger(__name__)


def _plan(quick: bool) -> dict[str, int]:
    if harness.smoke():
        return {"base": 3000, "queries": 50, "writes": 20, "lag_samples": 10,
                "deltas": 1000, "images": 8}
    if quick:
        return {"base": 50_000, "queries": 300, "writes": 200, "lag_samples": 50,
                "deltas": 100_000, "images": 32}
    return {"base": 200_000, "queries": 1000, "writes": 1000, "lag_samples": 200,
            "deltas": 100_000, "images": 128}


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return harness.l2_normalise(np.random.default_rng(seed).standard_normal((n, dim)))


async def _upserts(client: AsyncCoordinatorClient, n: int, batch: int, seed: int,
                   dim: int) -> dict[str, Any]:
    vectors = _vectors(n, dim, seed)
    start = time.perf_counter()
    for at in range(0, n, batch):
        items = [UpsertSpec(f"s3://bench-live/{seed}/{i}", vector=vectors[i])
                 for i in range(at, min(at + batch, n))]
        results = await client.upsert(items)
        assert all(r.ok for r in results), results[0].reason
    seconds = time.perf_counter() - start
    return {"items": n, "batch": batch, "upserts_per_s": round(n / seconds, 1)}


async def _lag(client: AsyncCoordinatorClient, replicas: list[cluster.ShardSearchClient],
               samples: int, dim: int) -> dict[str, Any]:
    lags = []
    vectors = _vectors(samples, dim, 99)
    for i, vector in enumerate(vectors):
        key = f"s3://bench-live/lag/{i}"
        results = await client.upsert([UpsertSpec(key, vector=vector)])
        acked = time.perf_counter()
        pending = list(replicas)
        while pending:
            tops = await asyncio.gather(*(r.search(vector) for r in pending))
            pending = [r for r, top in zip(pending, tops, strict=True)
                       if int(top[0]) != results[0].image_id]
            if pending:
                await asyncio.sleep(0.002)
        lags.append(time.perf_counter() - acked)
    return {"samples": samples, **harness.percentiles_ms(lags)}


async def _writes(coordinator: str, replicas: list[str], plan: dict[str, int],
                  dim: int) -> dict[str, Any]:
    async with AsyncCoordinatorClient(coordinator) as client:
        one = await _upserts(client, plan["writes"], 1, 1, dim)
        batched = await _upserts(client, plan["writes"] * 4, 64, 2, dim)
        shard_clients = [cluster.ShardSearchClient(a, 1) for a in replicas]
        try:
            lag = await _lag(client, shard_clients, plan["lag_samples"], dim)
        finally:
            for c in shard_clients:
                await c.close()
    return {"by_vector_1": one, "by_vector_64": batched, "visibility_lag": lag,
            "visibility_p99": harness.target(lag["p99_ms"], "<=", 1000.0,
                                             "visibility p99 ms")}


def _delta_qps(index_root: str, plan: dict[str, int], queries: np.ndarray) -> dict[str, Any]:
    """Every case answers each query in turn (round robin), so the load of a shared machine
    drifts over all cases alike and the ratios stay meaningful."""
    shard = index_layout.shard_uri(index_root, 0)
    manifest = read_manifest(f"{shard}/{INDEX_MANIFEST}", ShardManifest)
    index = faiss.read_index(f"{shard}/{index_layout.INDEX_FILE}")
    harness.set_faiss_threads(1)  # single queries: OpenMP threads only contend on 2 cores
    limit_numpy_blas_threads()  # as a shard server with --wal does
    params = manifest.search_params
    base_ids = np.arange(manifest.count, dtype=np.int64)  # only their count matters here
    cases: dict[str, Any] = {"none": lambda q: index.search(
        q, harness.K, params=search_parameters(index, params))}
    for size in sorted({0, min(10_000, plan["deltas"]), plan["deltas"]}):
        view = LiveView.of_base(base_ids, manifest.dim)
        ops = tuple(Upsert(10**15 + i, f"s3://d/{i}", v)
                    for i, v in enumerate(_vectors(size, manifest.dim, 7)))
        if ops:
            view = view.apply(LogEntry(1, 0, ops, "bench", 0))
        cases[f"delta_{size}"] = _live_searcher(index, view, params)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for query in queries:
        for name, search in cases.items():
            t0 = time.perf_counter()
            search(query.reshape(1, -1))
            samples[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for name, times in samples.items():
        out[name] = {"qps": round(len(times) / sum(times), 1), **harness.percentiles_ms(times)}
    for name in cases:
        if name != "none":
            out[name]["qps_vs_none"] = harness.ratio(out[name]["qps"], out["none"]["qps"])
    ten_k = out.get("delta_10000", {}).get("qps_vs_none")
    out["delta_10k_target"] = harness.target(ten_k, ">=", 0.8, "QPS with a 10k delta / none")
    return {"factory": manifest.factory, "base": manifest.count, **out}


def _live_searcher(index: Any, view: LiveView, params: dict[str, int]) -> Any:
    def search(queries: np.ndarray) -> Any:
        return live_search(index, view, queries, harness.K, params)

    return search


def run(quick: bool) -> dict[str, Any]:
    plan = _plan(quick or harness.smoke())
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    data = harness.glove_set(plan["base"], plan["queries"])
    cluster.write_embeddings_run(str(tmp / "emb"), data.base)
    cluster.run_cbir("build-index", "--embeddings", str(tmp / "emb"), "--output",
                     str(tmp / "index"), "--shards", "1")
    result: dict[str, Any] = {"plan": plan, "machine": harness.machine_info(),
                              "delta_search": _delta_qps(str(tmp / "index"), plan,
                                                         data.queries)}
    wal = str(tmp / "wal")
    with cluster.Processes() as procs:
        replicas = [_start_live_shard(procs, str(tmp / "index"), wal, f"shard0-{r}")
                    for r in range(2)]
        for address in replicas:
            procs.wait_serving(address, cluster.SHARD_SERVICE)
        topology = cluster.write_topology(tmp / "topology.json", {0: replicas})
        coordinator = cluster.start_coordinator(
            procs, topology, "coordinator",
            command=cbir_command("serve-coordinator", "--wal", wal))
        procs.wait_serving(coordinator, cluster.COORDINATOR_SERVICE)
        result["writes"] = asyncio.run(_writes(coordinator, replicas, plan, data.base.shape[1]))
    result["writes"].update(_by_image(tmp / "images", plan["images"]))
    return result


def _by_image(work: Path, count: int) -> dict[str, Any]:
    """Upserts/s by image: the coordinator decodes, embeds (the real model) and logs each."""
    from cbir.embedding import load_embedder
    from demo.photos import bundled_photos, edited_copies, encode_jpeg

    embedder = load_embedder()
    photos = bundled_photos()
    base = embedder.embed_bytes([encode_jpeg(p.pixels) for p in photos]).vectors
    cluster.write_embeddings_run(str(work / "emb"), base, name="photos", model=embedder.name,
                                 model_version=embedder.version)
    cluster.run_cbir("build-index", "--embeddings", str(work / "emb"), "--output",
                     str(work / "index"), "--shards", "1")
    images = [data for photo in photos for _, data in edited_copies(photo)]
    images = (images * (count // max(len(images), 1) + 1))[:count]
    wal = str(work / "wal")
    with cluster.Processes() as procs:
        replica = _start_live_shard(procs, str(work / "index"), wal, "photos-shard0")
        procs.wait_serving(replica, cluster.SHARD_SERVICE)
        topology = cluster.write_topology(work / "topology.json", {0: [replica]})
        address = f"127.0.0.1:{free_port()}"
        procs.start("photos-coordinator", cbir_command(  # image queries on: the real model
            "serve-coordinator", "--topology", str(topology), "--host", "127.0.0.1",
            "--port", address.rsplit(":", 1)[1], "--wal", wal, "--result-cache-bytes", "0"))
        procs.wait_serving(address, cluster.COORDINATOR_SERVICE)
        return asyncio.run(_image_upserts(address, images))


async def _image_upserts(address: str, images: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AsyncCoordinatorClient(address, timeout_s=120) as client:
        await client.upsert([UpsertSpec("s3://bench-photos/warm.jpg", image=images[0])])
        for batch in (1, 8):
            start = time.perf_counter()
            for at in range(0, len(images), batch):
                items = [UpsertSpec(f"s3://bench-photos/{batch}/{i}.jpg", image=images[i])
                         for i in range(at, min(at + batch, len(images)))]
                results = await client.upsert(items)
                assert all(r.ok for r in results), results[0].reason
            seconds = time.perf_counter() - start
            out[f"by_image_{batch}"] = {
                "items": len(images), "batch": batch,
                "mean_bytes": round(sum(map(len, images)) / len(images)),
                "upserts_per_s": round(len(images) / seconds, 1)}
    return out


def _start_live_shard(procs: cluster.Processes, index: str, wal: str, name: str) -> str:
    address = f"127.0.0.1:{free_port()}"
    procs.start(name, cbir_command(
        "serve-shard", "--index", index, "--shard", "0", "--host", "127.0.0.1",
        "--port", address.rsplit(":", 1)[1], "--wal", wal, "--wal-interval", "1"))
    return address
