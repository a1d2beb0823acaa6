"""Index build: ``cbir build-index`` (sequential engine and Spark) against building the same
index directly with Faiss in one process, on the same vectors, factory, training-sample size and
shard split.

Three views of cbir's build, from one run:
- ``cli_*``: the wall time of the real command (Python start, Parquet read, training, every
  shard task, manifests; for Spark also the session start) - what an operator waits for;
- ``library``: the same code path timed phase by phase in this process (``plan`` = manifest,
  sample and training; then ``build_shard`` per shard = route every part keeping the shard's
  rows, add in chunks, tune search parameters, write index + ids + manifest);
- ``direct_faiss``: train once on a sample of the same size, then per shard ``add`` +
  ``serialize`` + write, from vectors already in memory (no Parquet, no tuning, no ids table).
- ``scale`` (``bench.build_scale``): for 1, 4, 16 shards of a PQ index, the bytes the build reads
  over the data, one shard task's peak RSS over its index, the partitioned build over direct Faiss.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import build_scale, cluster, harness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildBench:
    n_base: int
    shards: int
    factory: str
    train_size: int


def _config(quick: bool) -> BuildBench:
    if quick:
        return BuildBench(n_base=50_000, shards=2, factory="IVF512,Flat", train_size=50_000)
    return BuildBench(n_base=200_000, shards=2, factory="IVF1024,Flat", train_size=100_000)


def direct_faiss(vectors: np.ndarray, ids: np.ndarray, cfg: BuildBench, out_dir: Path
                 ) -> dict[str, Any]:
    """The same index built the plain way: one process, arrays in memory."""
    import faiss

    harness.set_faiss_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(1234)
    t0 = time.perf_counter()
    sample = vectors[rng.choice(len(vectors), min(cfg.train_size, len(vectors)), replace=False)]
    trained = faiss.index_factory(vectors.shape[1], cfg.factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(sample)
    train_s = time.perf_counter() - t0
    shard_of = ids % cfg.shards
    per_shard = []
    for shard in range(cfg.shards):
        t1 = time.perf_counter()
        index = faiss.clone_index(trained)
        rows = np.flatnonzero(shard_of == shard)
        index.add_with_ids(vectors[rows], ids[rows])
        (out_dir / f"shard{shard}.faiss").write_bytes(faiss.serialize_index(index).tobytes())
        per_shard.append(round(time.perf_counter() - t1, 3))
    return {"train_s": round(train_s, 3), "per_shard_s": per_shard,
            "total_s": round(time.perf_counter() - t0, 3)}


def library_build(embeddings: str, output: str, cfg: BuildBench) -> dict[str, Any]:
    """cbir's build code timed by phase (the sequential engine's exact path)."""
    from jobs.build_index.build import BuildConfig, build_shard, plan

    config = BuildConfig(embeddings=embeddings, output=output, num_shards=cfg.shards,
                         factory=cfg.factory, train_size=cfg.train_size)
    t0 = time.perf_counter()
    planned = plan(config)
    plan_s = time.perf_counter() - t0
    per_shard, recalls = [], []
    for task in planned.tasks:
        t1 = time.perf_counter()
        manifest = build_shard(task, planned.trained)
        per_shard.append(round(time.perf_counter() - t1, 3))
        recalls.append(manifest.recall_at_10)
    return {"plan_and_train_s": round(plan_s, 3), "per_shard_s": per_shard,
            "total_s": round(time.perf_counter() - t0, 3), "tuned_recall@10": recalls,
            "search_params": manifest.search_params}


def cli_build(embeddings: str, output: str, cfg: BuildBench, engine: str) -> dict[str, Any]:
    argv = ["build-index", "--embeddings", embeddings, "--output", output,
            "--shards", str(cfg.shards), "--index", cfg.factory, "--engine", engine,
            "--train-size", str(cfg.train_size)]
    if engine == "spark":
        argv += ["--master", f"local[{os.cpu_count() or 1}]"]
    wall, _ = cluster.run_cbir(*argv)
    return {"wall_s": wall, "per_shard_s": round(wall / cfg.shards, 3)}


def _try(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        return dict(fn(*args))
    except Exception as exc:  # one failing view is reported, the others still run
        log.exception("build view failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _mean(values: list[float] | None) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def run(quick: bool) -> dict[str, Any]:
    cfg = _config(quick)
    data = harness.glove_set(cfg.n_base, 10)
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    ids = cluster.write_embeddings_run(str(work / "embeddings"), data.base)
    direct = _try(direct_faiss, data.base, ids, cfg, work)
    library = _try(library_build, str(work / "embeddings"), str(work / "index-lib"), cfg)
    seq = _try(cli_build, str(work / "embeddings"), str(work / "index-seq"), cfg, "sequential")
    spark = _try(cli_build, str(work / "embeddings"), str(work / "index-spark"), cfg, "spark")
    direct_shard = _mean(direct.get("per_shard_s"))
    lib_shard = _mean(library.get("per_shard_s"))
    return {
        "dataset": {"name": data.name, "base": len(data.base), "dim": data.dim},
        "factory": cfg.factory, "shards": cfg.shards, "train_size": cfg.train_size,
        "direct_faiss": direct, "library": library, "cli_sequential": seq, "cli_spark": spark,
        "ratios": {
            "library_shard_over_direct_shard": harness.ratio(lib_shard, direct_shard),
            "cli_sequential_over_direct_total": harness.ratio(seq.get("wall_s"),
                                                              direct.get("total_s")),
            "cli_spark_over_direct_total": harness.ratio(spark.get("wall_s"),
                                                         direct.get("total_s")),
        },
        "scale": _try(build_scale.run, quick),  # issue 14: bytes read, peak RSS, vs direct
        "table": [
            {"case": "direct faiss", "per_shard_s": direct_shard, "total_s": direct.get("total_s"),
             "error": direct.get("error")},
            {"case": "cbir library", "per_shard_s": lib_shard, "total_s": library.get("total_s"),
             "error": library.get("error")},
            {"case": "cbir build-index (seq)", "per_shard_s": seq.get("per_shard_s"),
             "total_s": seq.get("wall_s"), "error": seq.get("error")},
            {"case": "cbir build-index (spark)", "per_shard_s": spark.get("per_shard_s"),
             "total_s": spark.get("wall_s"), "error": spark.get("error")},
        ],
    }
