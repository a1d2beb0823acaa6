"""Peers on the same vectors: in-process Faiss (HNSW and IVF, the index types cbir serves)
against other embedded engines that install from PyPI and run offline (Qdrant Edge, LanceDB,
Milvus Lite). Every engine gets the same base set, the same held-out queries, and its own search
parameter tuned to the smallest value reaching recall@10 >= 0.95 on a separate tuning set; then
single-query latency (one thread), QPS under N concurrent threads, build time and recall on the
evaluation queries are measured by the same driver (bench.harness)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from bench import harness
from bench.harness import K, VectorSet

log = logging.getLogger(__name__)

PEER_PACKAGES = ("faiss-cpu", "qdrant-edge-py", "lancedb", "milvus-lite")
# Quick: the same size and split as bench.search's quick run, so the shard server's QPS can be
# set against the peers' on identical data. Full: 100k, because the peers' index builds on the
# whole 400k set (Qdrant Edge and LanceDB at ~0.3-0.5 ms per vector on 2 cores) would not fit
# the 10-minute budget for all five benchmarks.
QUICK_BASE, QUICK_QUERIES = 50_000, 300
FULL_BASE, FULL_QUERIES = 100_000, 1000
# Milvus Lite 3 is a pure-Python engine (tens of ms per query): opt in with
# CBIR_BENCH_PEERS=qdrant-edge,lancedb,milvus-lite.
DEFAULT_PEERS = ("qdrant-edge", "lancedb")
PEERS_ENV = "CBIR_BENCH_PEERS"


class Engine(Protocol):
    name: str
    package: str
    index: str
    param_name: str
    params: Sequence[int]

    def build(self, base: np.ndarray) -> None: ...
    def set_param(self, value: int) -> None: ...
    def search(self, query: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class FaissEngine:
    package = "faiss-cpu"

    def __init__(self, name: str, factory: str, param_name: str, params: Sequence[int]) -> None:
        self.name, self.index, self.param_name, self.params = name, factory, param_name, params
        self._index: Any = None

    def build(self, base: np.ndarray) -> None:
        import faiss

        harness.set_faiss_threads(os.cpu_count() or 1)  # builds use every core, like cbir's
        index = faiss.index_factory(base.shape[1], self.index, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(base)
        index.add(base)
        self._index = index
        # One query per call from each client thread: OpenMP teams only add overhead there.
        harness.set_faiss_threads(1)

    def set_param(self, value: int) -> None:
        import faiss

        faiss.ParameterSpace().set_index_parameter(self._index, self.param_name, value)

    def search(self, query: np.ndarray) -> np.ndarray:
        _, ids = self._index.search(query.reshape(1, -1), K)
        return ids[0]

    def search_batch(self, queries: np.ndarray) -> np.ndarray:
        return self._index.search(queries, K)[1]

    def close(self) -> None:
        self._index = None


class QdrantEdgeEngine:
    """Qdrant's embedded shard (Rust, in-process); HNSW built by its optimizer."""

    name = "qdrant-edge"
    package = "qdrant-edge-py"
    param_name = "hnsw_ef"
    params: Sequence[int] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

    def __init__(self, m: int = 32, ef_construct: int = 100) -> None:
        self.index = f"HNSW m={m} ef_construct={ef_construct}"
        self._m, self._ef_construct = m, ef_construct
        self._dir = tempfile.mkdtemp(prefix="bench-qdrant-")
        self._shard: Any = None
        self._params: Any = None

    def build(self, base: np.ndarray) -> None:
        import qdrant_edge as q

        config = q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=base.shape[1], distance=q.Distance.Dot),
            hnsw_config=q.HnswIndexConfig(
                m=self._m, ef_construct=self._ef_construct, full_scan_threshold=10
            ),
            # Index the whole set now (default thresholds leave small sets unindexed).
            optimizers=q.EdgeOptimizersConfig(indexing_threshold=1000, default_segment_number=1),
        )
        shard = q.EdgeShard.create(self._dir, config)
        for start in range(0, len(base), 10_000):
            chunk = base[start : start + 10_000]
            points = [q.Point(start + i, v) for i, v in enumerate(chunk.tolist())]
            shard.update(q.UpdateOperation.upsert_points(points))
        shard.optimize()
        self._shard = shard

    def set_param(self, value: int) -> None:
        import qdrant_edge as q

        self._params = q.SearchParams(hnsw_ef=value)

    def search(self, query: np.ndarray) -> np.ndarray:
        import qdrant_edge as q

        hits = self._shard.query(
            q.QueryRequest(limit=K, query=q.Query.Nearest(query.tolist()), params=self._params)
        )
        return np.array([int(h.id) for h in hits], dtype=np.int64)

    def search_batch(self, queries: np.ndarray) -> np.ndarray:
        """Qdrant's own batch API (``query_batch``: the queries planned and run together)."""
        import qdrant_edge as q

        requests = [q.QueryRequest(limit=K, query=q.Query.Nearest(v), params=self._params)
                    for v in queries.tolist()]
        answers = self._shard.query_batch(q.QueryBatchRequest(requests))
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for row, hits in enumerate(answers):
            out[row, : len(hits)] = [int(h.id) for h in hits]
        return out

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class LanceDBEngine:
    """LanceDB (Rust core, embedded) with an IVF_FLAT index: exact within the probed lists."""

    name = "lancedb"
    package = "lancedb"
    param_name = "nprobes"
    params: Sequence[int] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)

    def __init__(self) -> None:
        self.index = "IVF_FLAT"
        self._dir = tempfile.mkdtemp(prefix="bench-lancedb-")
        self._table: Any = None
        self._nprobes = 1

    def build(self, base: np.ndarray) -> None:
        import lancedb
        import pyarrow as pa
        from lancedb.index import IvfFlat

        partitions = max(1, int(math.sqrt(len(base))))
        self.index = f"IVF_FLAT num_partitions={partitions}"
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), base.shape[1])
        ids = pa.array(np.arange(len(base), dtype=np.int64))
        table = lancedb.connect(self._dir).create_table(
            "vectors", pa.table({"id": ids, "vector": vectors})
        )
        table.create_index(
            "vector", config=IvfFlat(distance_type="dot", num_partitions=partitions)
        )
        self._table = table

    def set_param(self, value: int) -> None:
        self._nprobes = value

    def search(self, query: np.ndarray) -> np.ndarray:
        result = (
            self._table.search(query, vector_column_name="vector")
            .distance_type("dot").nprobes(self._nprobes).limit(K)
            .select(["id", "_distance"]).to_arrow()
        )
        return result.column("id").to_numpy()

    def close(self) -> None:
        self._table = None
        shutil.rmtree(self._dir, ignore_errors=True)


class MilvusLiteEngine:
    """Milvus Lite 3 (pure Python engine over Faiss segment indexes), embedded API."""

    name = "milvus-lite"
    package = "milvus-lite"
    param_name = "ef"
    params: Sequence[int] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

    def __init__(self, m: int = 32, ef_construction: int = 100) -> None:
        self.index = f"HNSW M={m} efConstruction={ef_construction}"
        self._build_params = {"M": m, "efConstruction": ef_construction}
        self._dir = tempfile.mkdtemp(prefix="bench-milvus-")
        self._db: Any = None
        self._col: Any = None
        self._ef = 64

    def build(self, base: np.ndarray) -> None:
        from milvus_lite import CollectionSchema, DataType, FieldSchema, MilvusLite

        schema = CollectionSchema(fields=[
            FieldSchema(name="id", dtype=DataType.INT64, is_primary=True),
            FieldSchema(name="vec", dtype=DataType.FLOAT_VECTOR, dim=base.shape[1]),
        ])
        self._db = MilvusLite(self._dir)
        col = self._db.create_collection("vectors", schema)
        for start in range(0, len(base), 10_000):
            rows = base[start : start + 10_000].tolist()
            col.insert([{"id": start + i, "vec": v} for i, v in enumerate(rows)])
        col.flush()
        col.create_index("vec", {"index_type": "HNSW", "metric_type": "IP",
                                 "params": self._build_params})
        col.load()
        self._col = col

    def set_param(self, value: int) -> None:
        self._ef = value

    def search(self, query: np.ndarray) -> np.ndarray:
        hits = self._col.search([query.tolist()], top_k=K, metric_type="IP",
                                search_params={"params": {"ef": self._ef}})[0]
        return np.array([int(h["id"]) for h in hits], dtype=np.int64)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def faiss_engines(n_base: int) -> list[Engine]:
    nlist = max(16, int(4 * math.sqrt(n_base)))
    return [
        FaissEngine("faiss-hnsw", "HNSW32,Flat", "efSearch",
                    (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)),
        FaissEngine("faiss-ivf", f"IVF{nlist},Flat", "nprobe",
                    (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)),
    ]


PEER_FACTORIES: dict[str, Callable[[], Engine]] = {
    "qdrant-edge": QdrantEdgeEngine,
    "lancedb": LanceDBEngine,
    "milvus-lite": MilvusLiteEngine,
}


def measure_engine(
    engine: Engine, data: VectorSet, threads: int, load_s: float
) -> dict[str, Any]:
    """Build, tune to recall@10 >= 0.95 on the tuning queries, then measure on the eval set."""
    _, build_s = harness.timed(lambda: engine.build(data.base))

    def tune_recall(value: int) -> float:
        engine.set_param(value)
        return harness.recall_at_k(harness.search_all(engine.search, data.tune), data.tune_truth)

    param, tune_recall_value, sweep = harness.tune_smallest(engine.params, tune_recall)
    engine.set_param(param)
    seq = harness.sequential(engine.search, data.queries)
    recall = harness.recall_at_k(seq["found"], data.truth)
    load = harness.threaded_load(engine.search, data.queries, threads, load_s)
    batched = measure_batched(engine, data, threads, load_s)
    return {
        "engine": engine.name,
        "package": engine.package,
        "version": harness.package_versions([engine.package])[engine.package],
        "index": engine.index,
        "build_s": build_s,
        "search_param": {engine.param_name: param},
        "tune_recall@10": tune_recall_value,
        "tune_sweep": sweep,
        "recall@10": recall,
        "matched": recall >= harness.RECALL_TARGET,
        "single": harness.strip_arrays(seq),
        "load": load,
        "batched": batched,
        "best_mode": best_mode(load, recall, batched),
    }


def measure_batched(engine: Engine, data: VectorSet, threads: int, load_s: float
                    ) -> dict[str, Any]:
    """B queries per call through the engine's own batch API, where it has one (B = 1 is the
    single-query ``load`` figure); engines without one get ``{}``."""
    search_batch = getattr(engine, "search_batch", None)
    if search_batch is None:
        return {}
    return {f"B{size}": harness.threaded_batch_load(search_batch, data.queries, data.truth,
                                                    size, threads, load_s)
            for size in harness.BATCH_SIZES if size > 1}


def best_mode(load: dict[str, Any], recall: float, batched: dict[str, Any]) -> dict[str, Any]:
    """The engine's highest QPS over single-query and batched calls, at matched recall."""
    modes = [("B1", load["qps"], recall)] + [
        (key, fig["qps"], fig["recall@10"]) for key, fig in batched.items()]
    ok = [m for m in modes if m[2] >= harness.RECALL_TARGET]
    if not ok:
        return {"mode": None, "qps": None}
    mode, qps, rec = max(ok, key=lambda m: m[1])
    return {"mode": mode, "qps": qps, "recall@10": rec}


def run_engine(factory: Callable[[], Engine], data: VectorSet, threads: int,
               load_s: float) -> dict[str, Any]:
    """One engine; a failure (missing package, crash) is recorded, the others still run."""
    engine: Engine | None = None
    try:
        engine = factory()
        return measure_engine(engine, data, threads, load_s)
    except Exception as exc:  # a peer that fails is reported, never fatal to the run
        log.exception("engine failed")
        name = getattr(engine, "name", getattr(factory, "name", str(factory)))
        return {"engine": name, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if engine is not None:
            engine.close()


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        single, load = r.get("single", {}), r.get("load", {})
        out.append({
            "case": r["engine"], "param": r.get("search_param"), "recall@10": r.get("recall@10"),
            "p50_ms": single.get("p50_ms"), "p99_ms": single.get("p99_ms"),
            "qps_1": single.get("qps"), "qps_load": load.get("qps"),
            "p99_load_ms": load.get("p99_ms"), "build_s": r.get("build_s"),
            "error": r.get("error"),
        })
        for key, fig in (r.get("batched") or {}).items():
            out.append({"case": f"{r['engine']} {key} (queries/call)",
                        "recall@10": fig["recall@10"], "qps_load": fig["qps"],
                        "p99_load_ms": fig["p99_request_ms"]})
    return out


def _best(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any] | None:
    ok = [r for r in rows if r["engine"] in names and r.get("matched")]
    return max(ok, key=lambda r: r["load"]["qps"]) if ok else None


def _best_any_mode(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The best peer when each engine runs in its best mode (batched where it has a batch API)."""
    ok = [r for r in rows if r["engine"] in names and (r.get("best_mode") or {}).get("qps")]
    if not ok:
        return {"best_peer_any_mode": None, "best_peer_any_mode_qps": None}
    best = max(ok, key=lambda r: r["best_mode"]["qps"])
    return {"best_peer_any_mode": best["engine"], "best_peer_any_mode_mode": best["best_mode"],
            "best_peer_any_mode_qps": best["best_mode"]["qps"]}


def _const(engine: Engine) -> Callable[[], Engine]:
    return lambda: engine


def run(quick: bool, peers: Sequence[str] | None = None) -> dict[str, Any]:
    n_base, n_queries = (QUICK_BASE, QUICK_QUERIES) if quick else (FULL_BASE, FULL_QUERIES)
    load_s = 3.0 if quick else 6.0
    if harness.smoke():
        n_base, n_queries, load_s = 5_000, 100, 0.5
    threads = 2 * (os.cpu_count() or 1)
    data = harness.glove_set(n_base, n_queries)
    if peers is None:
        env = os.environ.get(PEERS_ENV)
        peers = [p.strip() for p in env.split(",") if p.strip()] if env else DEFAULT_PEERS
    unknown = [p for p in peers if p not in PEER_FACTORIES]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {sorted(PEER_FACTORIES)}")
    wanted = list(peers)
    rows = [run_engine(_const(e), data, threads, load_s) for e in faiss_engines(n_base)]
    rows += [run_engine(PEER_FACTORIES[name], data, threads, load_s) for name in wanted]
    best_faiss = _best(rows, ("faiss-hnsw", "faiss-ivf"))
    best_peer = _best(rows, wanted)
    faiss_qps = best_faiss["load"]["qps"] if best_faiss else None
    peer_qps = best_peer["load"]["qps"] if best_peer else None
    return {
        "dataset": {"name": data.name, "dim": data.dim, "base": len(data.base),
                    "queries": len(data.queries), "tune_queries": len(data.tune),
                    "metric": "inner product on L2-normalised vectors", "k": K},
        "threads": threads,
        "load_s": load_s,
        "recall_target": harness.RECALL_TARGET,
        "engines": rows,
        "best_faiss": best_faiss["engine"] if best_faiss else None,
        "best_peer": best_peer["engine"] if best_peer else None,
        "best_peer_load_qps": peer_qps,
        "best_peer_single_p99_ms": best_peer["single"]["p99_ms"] if best_peer else None,
        "faiss_over_best_peer_load_qps": harness.ratio(faiss_qps, peer_qps),
        **_best_any_mode(rows, wanted),
        "table": _table(rows),
    }
