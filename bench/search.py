"""Search overhead: the same vectors and the same index type, searched
(a) in-process with Faiss (the very ``index.faiss`` file a shard server loads, same tuned
    search parameters), and (a2) in-process over the 2-shard build's files, merged in numpy;
(b) through one shard server (``cbir serve-shard``, raw ``cbir.v1.Shard/Search`` calls);
(c) through the coordinator (``cbir serve-coordinator``) over 2 shard servers, by vector with
    ``cbir.client.AsyncCoordinatorClient``; (c) batched: B queries per ``SearchBatch`` request.
Per path: single-query p50/p99 latency (one query in flight), QPS and p99 with ``concurrency``
queries in flight (threads for (a), one asyncio client for (b)/(c)), recall@10 against exact
search. Indexes are built with ``cbir build-index`` (1 shard and 2 shards, same factory).

Data sets: GloVe-6B-50d (400k word vectors: the floor, where a query's search costs
microseconds and the RPC layer is everything), the realistic working point (GloVe projected
to 1280-d, the default model's dim, with a fixed random matrix plus small noise, then
normalised: a search costs what a real embedding's does) and embeddings of real photos (the
bundled photos and their seeded edits, embedded with cbir's default model; tiny, so a Flat
index)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import cluster, harness
from bench.harness import K, VectorSet
from bench.search_data import photo_set, projected_glove_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    concurrency: int
    load_s: float
    glove_base: int
    glove_queries: int
    glove_factory: str
    photo_edits: bool  # index the edited copies too (more vectors) in full runs
    # Queries per request for the batched comparison (GloVe only: the photo set is too small).
    batch_sizes: tuple[int, ...] = harness.BATCH_SIZES
    # The realistic working point: 1280-d projected GloVe.
    wide_base: int = 20_000
    wide_queries: int = 300
    wide_factory: str = "IVF128,Flat"


def _plan(quick: bool) -> Plan:
    # Quick GloVe size and split match bench.peers', so the peers' figures compare directly.
    from bench.peers import QUICK_BASE, QUICK_QUERIES

    if quick:
        return Plan(concurrency=16, load_s=3.0, glove_base=QUICK_BASE,
                    glove_queries=QUICK_QUERIES, glove_factory="IVF512,Flat", photo_edits=False)
    return Plan(concurrency=16, load_s=5.0, glove_base=400_000, glove_queries=1000,
                glove_factory="IVF2048,Flat", photo_edits=True, wide_base=200_000,
                wide_queries=500, wide_factory="IVF1024,Flat")


# ---------------------------------------------------------------------------- in-process


def _load_shard_index(index_root: str, shard: int) -> tuple[Any, Any]:
    """The shard's Faiss index as the server loads it, plus its tuned search parameters."""
    import faiss

    from cbir import index_layout, storage
    from cbir.faiss_params import search_parameters
    from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest

    data = storage.read_bytes(index_layout.shard_file(index_root, shard, index_layout.INDEX_FILE))
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    manifest = read_manifest(index_layout.shard_file(index_root, shard, INDEX_MANIFEST),
                             ShardManifest)
    return index, search_parameters(index, manifest.search_params)


def in_process_search(index_root: str, num_shards: int) -> harness.SearchOne:
    """(a) one index, or (a2) every shard of a build searched in turn and merged exactly."""
    shards = [_load_shard_index(index_root, s) for s in range(num_shards)]

    def search(query: np.ndarray) -> np.ndarray:
        q = query.reshape(1, -1)
        if len(shards) == 1:
            index, params = shards[0]
            return index.search(q, K, params=params)[1][0]
        scores, ids = zip(*(index.search(q, K, params=params) for index, params in shards),
                          strict=True)
        all_scores, all_ids = np.concatenate(scores, axis=1)[0], np.concatenate(ids, axis=1)[0]
        order = np.lexsort((all_ids, -all_scores))[:K]  # score desc, ties by id
        return all_ids[order]

    return search


def in_process_batch_search(index_root: str) -> harness.SearchBatch:
    """(a) with B queries per ``index.search`` call: the in-process twin of batched requests."""
    index, params = _load_shard_index(index_root, 0)

    def search(queries: np.ndarray) -> np.ndarray:
        return index.search(queries, K, params=params)[1]

    return search


def measure_in_process(search: harness.SearchOne, data: VectorSet, truth_ids: np.ndarray,
                       plan: Plan) -> dict[str, Any]:
    harness.set_faiss_threads(1)  # one query per call from each client thread
    seq = harness.sequential(search, data.queries)
    load = harness.threaded_load(search, data.queries, plan.concurrency, plan.load_s)
    return {"recall@10": harness.recall_at_k(seq["found"], truth_ids),
            "single": harness.strip_arrays(seq), "load": load}


# ---------------------------------------------------------------------------- over gRPC


async def measure_remote(search: Callable[[np.ndarray], Awaitable[np.ndarray]],
                         data: VectorSet, truth_ids: np.ndarray, plan: Plan) -> dict[str, Any]:
    seq = await harness.async_sequential(search, data.queries)
    load = await harness.async_load(search, data.queries, plan.concurrency, plan.load_s)
    return {"recall@10": harness.recall_at_k(seq["found"], truth_ids),
            "single": harness.strip_arrays(seq), "load": load}


async def rpc_floor(address: str, data: VectorSet, plan: Plan) -> dict[str, Any]:
    """A no-op unary call (grpc.health.v1 Check) to the same server with the same client and
    load: what one Python gRPC round trip costs on this machine, whatever the handler does."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")

        async def ping(query: np.ndarray) -> np.ndarray:
            await stub.Check(request, timeout=10.0)
            return np.full(K, -1, dtype=np.int64)

        seq = await harness.async_sequential(ping, data.queries)
        load = await harness.async_load(ping, data.queries, plan.concurrency, plan.load_s)
    return {"single": harness.strip_arrays(seq), "load": load}


async def _remote_paths(one_shard: str, coordinator: str, data: VectorSet,
                        truth_ids: np.ndarray, plan: Plan) -> dict[str, Any]:
    shard_client = cluster.ShardSearchClient(one_shard, K)
    coord_client = cluster.CoordinatorSearchClient(coordinator, K)
    try:
        b = await measure_remote(shard_client.search, data, truth_ids, plan)
        c = await measure_remote(coord_client.search, data, truth_ids, plan)
        c["partial_answers"] = coord_client.partial
        floor = await rpc_floor(one_shard, data, plan)
        b_batched = {f"B{size}": await harness.async_batch_load(
            shard_client.search_batch, data.queries, truth_ids, size, plan.concurrency,
            plan.load_s) for size in plan.batch_sizes} if plan.batch_sizes else {}
        c_batched = await coordinator_batched(coordinator, data, truth_ids, plan)
    finally:
        await shard_client.close()
        await coord_client.close()
    return {"b_shard_server": b, "c_coordinator_2_shards": c, "grpc_noop_floor": floor,
            "b_batched": b_batched, "c_batched": c_batched}


async def coordinator_batched(coordinator: str, data: VectorSet, truth_ids: np.ndarray,
                              plan: Plan) -> dict[str, Any]:
    """(c) with B queries per ``SearchBatch`` request (one shard call per shard per batch)."""
    from cbir.client import AsyncCoordinatorClient

    # A long deadline: B queries per request under C in flight on shared cores can take
    # seconds per request; a timed-out batch would lose the whole data set's figures.
    async with AsyncCoordinatorClient(coordinator, timeout_s=120.0) as client:
        async def search(queries: np.ndarray) -> np.ndarray:
            found = np.full((len(queries), K), -1, dtype=np.int64)
            for row, result in enumerate(await client.search_batch(queries, k=K)):
                ids = [h.image_id for h in result.hits][:K]
                found[row, : len(ids)] = ids
            return found

        return {f"B{size}": await harness.async_batch_load(
            search, data.queries, truth_ids, size, plan.concurrency, plan.load_s)
            for size in plan.batch_sizes}


def measure_batched_in_process(index_root: str, data: VectorSet, truth_ids: np.ndarray,
                               plan: Plan) -> dict[str, Any]:
    """(a) with B queries per call, the same C client threads, one OpenMP thread per call."""
    harness.set_faiss_threads(1)
    search = in_process_batch_search(index_root)
    return {f"B{size}": harness.threaded_batch_load(search, data.queries, truth_ids, size,
                                                    plan.concurrency, plan.load_s)
            for size in plan.batch_sizes}


def build_indexes(work: Path, data: VectorSet, factory: str, name: str) -> tuple[np.ndarray, dict]:
    embeddings = str(work / "embeddings")
    ids = cluster.write_embeddings_run(embeddings, data.base, name=name)
    walls = {}
    for shards in (1, 2):
        walls[f"{shards}_shard_build_s"], _ = cluster.run_cbir(
            "build-index", "--embeddings", embeddings, "--output", str(work / f"index{shards}"),
            "--shards", str(shards), "--index", factory, "--engine", "sequential",
            "--train-size", str(min(100_000, len(data.base))), "--target-recall", "0.96")
    return ids, walls


def measure_dataset(data: VectorSet, factory: str, plan: Plan, name: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-search-{name}-"))
    ids, builds = build_indexes(work, data, factory, name)
    truth_ids = ids[data.truth]
    index1, index2 = str(work / "index1"), str(work / "index2")
    with cluster.Processes() as procs:
        one = cluster.start_shard(procs, index1, 0, "shard-1x")
        two = [cluster.start_shard(procs, index2, s, f"shard-2x-{s}") for s in range(2)]
        topology = cluster.write_topology(work / "topology.json", {0: [two[0]], 1: [two[1]]})
        coordinator = cluster.start_coordinator(procs, topology, "coordinator")
        # Every server is up and idle before anything is timed (loading competes for cores).
        for address in (one, *two):
            procs.wait_serving(address, cluster.SHARD_SERVICE)
        procs.wait_serving(coordinator, cluster.COORDINATOR_SERVICE)
        a = measure_in_process(in_process_search(index1, 1), data, truth_ids, plan)
        a2 = measure_in_process(in_process_search(index2, 2), data, truth_ids, plan)
        a_batched = measure_batched_in_process(index1, data, truth_ids, plan)
        remote = asyncio.run(_remote_paths(one, coordinator, data, truth_ids, plan))
    floor = remote.pop("grpc_noop_floor")
    b_batched = remote.pop("b_batched")
    c_batched = remote.pop("c_batched")
    paths = {"a_in_process": a, "a2_in_process_2_shards": a2, **remote}
    result = _summarise(data, factory, builds, paths, _manifest_params(index1))
    result["grpc_noop_floor"] = floor
    result["ratios"]["b_over_noop_rpc_load_qps"] = harness.ratio(
        paths["b_shard_server"]["load"]["qps"], floor["load"]["qps"])
    result["batched"] = _batched_summary(a_batched, b_batched, c_batched, a["load"]["qps"])
    return result


def _batched_summary(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any],
                     a_single_qps: float) -> dict[str, Any]:
    """Per B: in-process Faiss, the shard server and the coordinator (SearchBatch), each with
    B queries per call/request; c over in-process SINGLE-query QPS is the batch API's gain."""
    return {key: {"a_in_process": a[key], "b_shard_server": b.get(key),
                  "c_coordinator_search_batch": c.get(key),
                  "b_over_a_qps": harness.ratio((b.get(key) or {}).get("qps"), a[key]["qps"]),
                  "c_over_a_single_qps": harness.ratio((c.get(key) or {}).get("qps"),
                                                       a_single_qps)}
            for key in a}


def _manifest_params(index_root: str) -> dict[str, int]:
    from cbir import index_layout
    from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest

    uri = index_layout.shard_file(index_root, 0, INDEX_MANIFEST)
    return dict(read_manifest(uri, ShardManifest).search_params)


def _summarise(data: VectorSet, factory: str, builds: dict[str, float],
               paths: dict[str, dict[str, Any]], params: dict[str, int]) -> dict[str, Any]:
    a, a2 = paths["a_in_process"], paths["a2_in_process_2_shards"]
    c = paths["c_coordinator_2_shards"]
    return {
        "dataset": {"name": data.name, "dim": data.dim, "base": len(data.base),
                    "queries": len(data.queries)},
        "factory": factory, "builds": builds, "faiss_search_params": params,
        "paths": paths,
        "ratios": {
            "c_over_a_load_qps": harness.ratio(c["load"]["qps"], a["load"]["qps"]),
            "c_over_a2_load_qps": harness.ratio(c["load"]["qps"], a2["load"]["qps"]),
            "c_over_a_single_p50": harness.ratio(c["single"]["p50_ms"], a["single"]["p50_ms"]),
            "c_over_a_single_p99": harness.ratio(c["single"]["p99_ms"], a["single"]["p99_ms"]),
        },
    }


# ---------------------------------------------------------------------------- report


def _batched_rows(result: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    rows = []
    for key, pair in (result.get("batched") or {}).items():
        for name in ("a_in_process", "b_shard_server", "c_coordinator_search_batch"):
            fig = pair.get(name)
            if fig:
                rows.append({"case": f"{dataset}: {name} {key} (queries/request)",
                             "recall@10": fig["recall@10"], "qps_load": fig["qps"],
                             "p99_load_ms": fig["p99_request_ms"]})
    return rows


def _rows(result: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    if "error" in result:
        return [{"case": f"{dataset}: all", "error": result["error"]}]
    floor = result["grpc_noop_floor"]
    return [{"case": f"{dataset}: no-op gRPC floor", "p50_ms": floor["single"]["p50_ms"],
             "p99_ms": floor["single"]["p99_ms"], "qps_1": floor["single"]["qps"],
             "qps_load": floor["load"]["qps"], "p99_load_ms": floor["load"]["p99_ms"]}] + [
        {"case": f"{dataset}: {name}", "recall@10": p["recall@10"],
         "p50_ms": p["single"]["p50_ms"], "p99_ms": p["single"]["p99_ms"],
         "qps_1": p["single"]["qps"], "qps_load": p["load"]["qps"],
         "p99_load_ms": p["load"]["p99_ms"]}
        for name, p in result["paths"].items()
    ] + _batched_rows(result, dataset)


def _try_dataset(make: Callable[[], VectorSet], factory: str, plan: Plan, name: str
                 ) -> dict[str, Any]:
    try:
        return measure_dataset(make(), factory, plan, name)
    except Exception as exc:  # one data set failing still reports the other
        log.exception("search benchmark on %s failed", name)
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(quick: bool) -> dict[str, Any]:
    plan = _plan(quick)
    results = {
        "glove": _try_dataset(lambda: harness.glove_set(plan.glove_base, plan.glove_queries),
                              plan.glove_factory, plan, "glove"),
        "glove_1280d": _try_dataset(
            lambda: projected_glove_set(plan.wide_base, plan.wide_queries), plan.wide_factory,
            replace(plan, batch_sizes=(32,)), "glove1280"),
        "photos": _try_dataset(lambda: photo_set(plan.photo_edits), "Flat",
                               replace(plan, batch_sizes=()), "photos"),
    }
    return {
        "concurrency": plan.concurrency, "load_s": plan.load_s, "cpus": os.cpu_count(),
        **results,
        "targets": _targets(results["glove"], results["glove_1280d"]),
        "table": _rows(results["glove"], "glove") + _rows(results["glove_1280d"], "glove-1280d")
        + _rows(results["photos"], "photos"),
    }


def _targets(glove: dict[str, Any], wide: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    if "error" not in glove:
        a, c = glove["paths"]["a_in_process"], glove["paths"]["c_coordinator_2_shards"]
        targets["coordinator_qps_over_in_process"] = harness.target(
            glove["ratios"]["c_over_a_load_qps"], ">=", 0.5,
            f"GloVe: coordinator QPS under load / in-process Faiss QPS (recall "
            f"{c['recall@10']} vs {a['recall@10']})")
        b32 = (glove.get("batched") or {}).get("B32") or {}
        targets["coordinator_search_batch_b32_over_in_process_single"] = harness.target(
            b32.get("c_over_a_single_qps"), ">=", 0.5,
            "GloVe-50d: coordinator SearchBatch (B=32) queries/s under load / in-process "
            "Faiss single-query QPS")
    if "error" not in wide:
        a, c = wide["paths"]["a_in_process"], wide["paths"]["c_coordinator_2_shards"]
        targets["working_point_1280d_coordinator_over_in_process"] = harness.target(
            wide["ratios"]["c_over_a_load_qps"], ">=", 0.6,
            f"{wide['dataset']['name']}: coordinator over 2 shards QPS under load / "
            f"in-process Faiss single-query QPS (recall {c['recall@10']} vs "
            f"{a['recall@10']}; target recall >= 0.95)")
        targets["working_point_1280d_recall"] = harness.target(
            min(c["recall@10"], a["recall@10"]), ">=", 0.95,
            "recall@10 against brute force, coordinator and in-process")
    return targets
