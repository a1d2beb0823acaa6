"""``python -m bench scale [--quick]``: the largest build this machine holds, end to end (issue 14).

GloVe-400k projected to ``dim`` dimensions with a fixed random matrix and perturbed (so 400k
words make millions of distinct vectors), written as a real embeddings run (Parquet +
``_MANIFEST.json``), then:

- built with 16 shards by the real ``cbir build-index`` (sequential engine, one Faiss thread, a
  PQ factory at a recall target it meets) in a child process whose embeddings filesystem counts
  the bytes read (``bench.counting_fs``): ``bytes_read_over_data``, the wall time, the whole
  command's peak RSS;
- one shard task of that build alone in a fresh process (``bench.build_scale``): its peak RSS
  absolute and above the process's baseline, over its index and over index + id/key table;
- the same factory built directly with Faiss on the same vectors (train + add + serialise);
- a 2-shard build of the same run, served by 2 real shard servers and a real coordinator:
  recall@10 and QPS through the coordinator, the servers' RSS per vector;
- ``memory_model`` (``bench.scale_memory``): select.py's per-factory estimates against measured
  RSS at one moderate size.

The per-unit costs docs/scaling.md uses are in ``per_unit``. Figures on a shared machine are
noisy: read the ratios, which are measured within one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import build_scale, cluster, harness, scale_memory

COUNT_ENV = "CBIR_BENCH_COUNT_BYTES_TO"  # the counted child writes its bytes read here


@dataclass(frozen=True)
class ScaleConfig:
    n: int
    dim: int
    factory: str
    train_size: int
    target_recall: float
    shards: int = 16
    serve_shards: int = 2
    rows_per_group: int = 32_768  # ~32 MB of 256-d floats: a usual Parquet row group
    parts: int = 8
    queries: int = 500
    noise: float = 0.2  # norm of the perturbation added to each unit vector
    load_s: float = 10.0
    concurrency: int = 8


def _config(quick: bool) -> ScaleConfig:
    if harness.smoke():
        return ScaleConfig(20_000, 64, "IVF64,PQ16", 5_000, 0.5, shards=4, rows_per_group=4096,
                           parts=2, queries=50, load_s=1.0)
    if quick:
        return ScaleConfig(100_000, 128, "IVF256,PQ32", 20_000, 0.5, rows_per_group=8192,
                           parts=4, queries=200, load_s=3.0)
    return ScaleConfig(1_000_000, 256, "IVF1024,PQ64", 50_000, 0.5)


# ---------------------------------------------------------------------------- data


def projected(cfg: ScaleConfig, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base n x dim, queries, exact top-10 of the queries over base). Row i of the base is
    GloVe word ``i % words`` projected by a fixed Gaussian matrix plus fresh noise of norm
    ``cfg.noise``, L2-normalised; the queries come from words held out of the base."""
    raw = harness.load_glove().astype(np.float32)
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((raw.shape[1], cfg.dim)).astype(np.float32)
    order = rng.permutation(len(raw))
    held, words = order[: cfg.queries], order[cfg.queries:]

    def make(rows: np.ndarray) -> np.ndarray:
        x = harness.l2_normalise(raw[rows] @ matrix)
        x += rng.standard_normal(x.shape, dtype=np.float32) * (cfg.noise / np.sqrt(cfg.dim))
        return harness.l2_normalise(x)

    base = np.empty((cfg.n, cfg.dim), np.float32)
    step = 100_000
    for start in range(0, cfg.n, step):
        stop = min(cfg.n, start + step)
        base[start:stop] = make(words[np.arange(start, stop) % len(words)])
    queries = make(held)
    return base, queries, harness.exact_topk(base, queries)


def write_run(uri: str, base: np.ndarray, cfg: ScaleConfig) -> np.ndarray:
    """``base`` as a finished embeddings run: ``cfg.parts`` Parquet parts of
    ``cfg.rows_per_group``-row groups, written part by part; returns the image ids."""
    from cbir import storage
    from cbir.ids import image_id, shards_of
    from cbir.schema import EMBED_MANIFEST, EmbedManifest, embeddings_schema, write_manifest

    n, dim = base.shape
    keys = [f"s3://bench-scale/{i:08d}" for i in range(n)]
    ids = np.array([image_id(k) for k in keys], dtype=np.int64)
    schema = embeddings_schema(dim, cluster.BENCH_MODEL, cluster.BENCH_MODEL_VERSION)
    step, names = -(-n // cfg.parts), []
    Path(uri).mkdir(parents=True, exist_ok=True)
    for p, start in enumerate(range(0, n, step)):
        rows = slice(start, min(n, start + step))
        count = rows.stop - rows.start
        flat = pa.array(base[rows].reshape(-1), pa.float32())
        table = pa.Table.from_arrays(
            [pa.array(ids[rows]), pa.array(keys[rows], pa.string()),
             pa.array(shards_of(ids[rows], 1)), pa.FixedSizeListArray.from_arrays(flat, dim),
             pa.nulls(count, pa.int32()), pa.nulls(count, pa.int32()),
             pa.nulls(count, pa.int64())], schema=schema)
        names.append(f"part-{p:05d}.parquet")
        pq.write_table(table, str(Path(uri) / names[-1]), row_group_size=cfg.rows_per_group)
    write_manifest(storage.join(uri, EMBED_MANIFEST), EmbedManifest(
        model=cluster.BENCH_MODEL, model_version=cluster.BENCH_MODEL_VERSION, dim=dim,
        num_images=n, num_errors=0, input="s3://bench-scale/", parts=names))
    return ids


# ---------------------------------------------------------------------------- the build


def _build_argv(emb: str, out: str, shards: int, cfg: ScaleConfig) -> list[str]:
    return ["build-index", "--embeddings", emb, "--output", out, "--shards", str(shards),
            "--index", cfg.factory, "--engine", "sequential", "--train-size",
            str(cfg.train_size), "--target-recall", str(cfg.target_recall),
            "--faiss-threads", "1", "--no-progress"]


def counted_cli_build(emb: str, out: str, shards: int, cfg: ScaleConfig,
                      work: Path) -> dict[str, Any]:
    """The real ``cbir build-index`` in a child process whose embeddings filesystem counts the
    bytes read; one OpenMP thread (training included), so its time is per core."""
    count_file = work / f"bytes-{shards}.json"
    env = {**os.environ, COUNT_ENV: str(count_file), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.scale", *_build_argv(emb, out, shards, cfg)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"build-index ({shards} shards) failed: {stderr.decode()[-1500:]}")
    top = json.loads(stdout.decode())
    data_bytes = sum(p.stat().st_size for p in Path(emb).glob("*.parquet"))
    counted = json.loads(count_file.read_text())
    read = int(counted["bytes_read"])
    return {"shards": shards, "wall_s": round(wall, 3), "bytes_read": read,
            "data_bytes": data_bytes, "bytes_read_over_data": round(read / data_bytes, 3),
            "cli_peak_rss_bytes": int(counted["peak_rss_bytes"]),
            "recall_at_10": top["recall_at_10"],
            "search_params": top["search_params"]}


def shard_task(emb: str, out: str, shards: int, cfg: ScaleConfig, work: Path) -> dict[str, Any]:
    """Shard 0 of the build at ``out`` rebuilt alone in a fresh process (bench.build_scale),
    from the trained index the CLI stored (same config, same version: not trained again)."""
    from jobs.build_index import build

    config = build.BuildConfig(emb, out, shards, cfg.factory, train_size=cfg.train_size,
                               target_recall=cfg.target_recall, faiss_threads=1,
                               train_device="cpu")
    planned = build.plan(config)
    sub = work / f"task-{shards}"
    sub.mkdir(exist_ok=True)
    return build_scale.shard_task_rss(sub, planned.tasks[0], planned.trained, emb, shards)


# ---------------------------------------------------------------------------- serving


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _query(address: str, queries: np.ndarray, cfg: ScaleConfig) -> dict[str, Any]:
    client = cluster.CoordinatorSearchClient(address, harness.K)
    try:
        single = await harness.async_sequential(client.search, queries, warmup=20)
        load = await harness.async_load(client.search, queries, cfg.concurrency, cfg.load_s)
    finally:
        await client.close()
    return {"single": single, "load": load, "partial_answers": client.partial}


def serve(index: str, queries: np.ndarray, truth: np.ndarray, cfg: ScaleConfig,
          work: Path) -> dict[str, Any]:
    """``cfg.serve_shards`` shard servers x 1 replica + a coordinator, real processes."""
    with cluster.Processes() as procs:
        topology = {s: [cluster.start_shard(procs, index, s, f"shard{s}")]
                    for s in range(cfg.serve_shards)}
        for (address,) in topology.values():
            procs.wait_serving(address, cluster.SHARD_SERVICE)
        coord = cluster.start_coordinator(
            procs, cluster.write_topology(work / "topology.json", topology), "coordinator")
        procs.wait_serving(coord, cluster.COORDINATOR_SERVICE)
        result = asyncio.run(_query(coord, queries, cfg))
        shard_rss = [_rss_bytes(proc.pid) for name, proc, _ in procs.children
                     if name.startswith("shard")]
    single = result["single"]
    return {"recall@10": harness.recall_at_k(single.pop("found"), truth),
            "single": single, "load": result["load"],
            "partial_answers": result["partial_answers"], "shard_rss_bytes": shard_rss}


# ---------------------------------------------------------------------------- the run


def _per_unit(cfg: ScaleConfig, build16: dict[str, Any], served: dict[str, Any],
              index_bytes: int, baseline_rss: int) -> dict[str, Any]:
    """The per-unit costs docs/scaling.md multiplies out (one core for the build)."""
    millions = cfg.n / 1e6
    rss_above = sum(served["shard_rss_bytes"]) - cfg.serve_shards * baseline_rss
    return {
        "build_s_per_million_vectors_per_core": round(build16["wall_s"] / millions, 1),
        "index_bytes_per_vector": round(index_bytes / cfg.n, 2),
        "served_rss_bytes_per_vector_above_baseline": round(rss_above / cfg.n, 2),
        "served_rss_bytes_per_vector_absolute": round(sum(served["shard_rss_bytes"]) / cfg.n,
                                                      2),
        "coordinator_qps_per_core": round(served["load"]["qps"] / (os.cpu_count() or 1), 1),
    }


def memory_model_run(n: int, dim: int, uri: str) -> None:
    """The memory model's embeddings run: ``n`` projected vectors of ``dim``, small groups."""
    cfg = ScaleConfig(n, dim, "", 0, 0.0, rows_per_group=8192, parts=2, queries=10)
    base, _, _ = projected(cfg)
    write_run(uri, base, cfg)


def _index_bytes(index: str) -> int:
    return sum(p.stat().st_size for p in Path(index).glob("shard=*/index.faiss"))


def run(quick: bool) -> dict[str, Any]:
    harness.set_faiss_threads(1)  # direct Faiss on one core, like the CLI's tasks
    cfg = _config(quick)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    emb = str(work / "embeddings")
    base, queries, truth = projected(cfg)
    ids = write_run(emb, base, cfg)
    ix16, ix2 = str(work / f"ix-{cfg.shards}"), str(work / f"ix-{cfg.serve_shards}")
    build16 = counted_cli_build(emb, ix16, cfg.shards, cfg, work)
    task16 = shard_task(emb, ix16, cfg.shards, cfg, work)
    direct_s = build_scale.direct_s(base, ids, cfg.factory, cfg.train_size, cfg.shards)
    del base
    build2 = counted_cli_build(emb, ix2, cfg.serve_shards, cfg, work)
    task2 = shard_task(emb, ix2, cfg.serve_shards, cfg, work)
    served = serve(ix2, queries, ids[truth], cfg, work)  # truth holds row numbers
    return {
        "dataset": {"name": f"glove-6b-50d projected to {cfg.dim}-d + noise {cfg.noise}",
                    "base": cfg.n, "dim": cfg.dim, "queries": cfg.queries},
        "config": {k: v for k, v in cfg.__dict__.items()},
        "build": {"by_shards": [build16, build2], "direct_faiss_s": round(direct_s, 3),
                  "build_over_direct": harness.ratio(build16["wall_s"], direct_s)},
        "shard_task": {"shards_16": task16, "shards_2": task2},
        "serve": served,
        "per_unit": _per_unit(cfg, build16, served, _index_bytes(ix2),
                              task2["task_start_rss_bytes"]),
        "memory_model": scale_memory.run(quick, memory_model_run),
        "targets": {
            "bytes_read_over_data": harness.target(build16["bytes_read_over_data"], "<=", 1.25,
                                                   "16-shard build, bytes read / run size"),
            "peak_rss_over_index": harness.target(
                task2["peak_rss_over_index"], "<=", 2.0,
                "one shard task of the 2-shard build, above its start RSS / its index"),
            "build_over_direct": harness.target(harness.ratio(build16["wall_s"], direct_s),
                                                "<=", 1.5, "cbir build-index / direct Faiss"),
        },
    }


def _counted_cli(argv: list[str]) -> int:
    """``cbir ARGV`` with the embeddings filesystem counting bytes (child of counted_cli_build)."""
    from bench.counting_fs import CountingFilesystem
    from cbir.cli import main
    from jobs.build_index import embeddings_run

    counter = CountingFilesystem(embeddings_run.filesystem)
    embeddings_run.filesystem = counter
    try:
        code = main(argv)
    finally:
        # This process's own peak: a parent's ru_maxrss for it would include the memory of the
        # bench process it was forked from (Linux carries the pre-exec peak into ru_maxrss).
        Path(os.environ[COUNT_ENV]).write_text(json.dumps({
            "bytes_read": counter.bytes_read,
            "peak_rss_bytes": build_scale.status_kib("VmHWM") * 1024}))
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(_counted_cli(sys.argv[1:]))
