"""The memory model of ``jobs/build_index/select.py`` against measured RSS, per factory, at one
moderate size (``python -m bench scale``'s ``memory_model`` section).

For each factory, one shard of ``n`` vectors (the projected GloVe set of ``bench.scale``):
- ``served``: a fresh process loads the shard exactly as the shard server does
  (``shard_server.index_store.load_shard``: index, id table, metadata, IVF id hash map); its RSS
  growth is compared with ``select.estimate_bytes`` (what automatic selection budgets);
- ``build``: the shard's reduce task alone in a fresh process (``bench.build_scale``): peak RSS
  above its start, over the index it wrote.

Run as ``python -m bench.scale_memory INDEX_ROOT`` it is the loading process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import build_scale

log = logging.getLogger(__name__)


def factories(n: int, dim: int) -> list[str]:
    from jobs.build_index import select

    nlist = select.nlist_for(n)
    m = dim // 4  # 4 dims per sub-quantiser, as the scale run's PQ
    # OPQ is left out: its rotation's training alone ran past 5 minutes on 10k x 64-d on the
    # shared 2-core machine; select.py budgets it as PQ + a d x d rotation.
    return ["Flat", f"IVF{nlist},Flat", f"IVF{nlist},SQ8", f"IVF{nlist},PQ{m}", "HNSW32"]


def _served(index_root: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.scale_memory", index_root],
                         capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def one_factory(work: Path, emb: str, factory: str, n: int, dim: int) -> dict[str, Any]:
    from jobs.build_index import build, select

    # Memory is the point here, not recall: a low target keeps PQ from failing the build.
    config = build.BuildConfig(emb, str(work / "trained"), 1, factory, train_size=min(n, 10_000),
                               target_recall=0.3, faiss_threads=1, train_device="cpu",
                               tune_queries=200)
    planned = build.plan(config)
    task_dir = work / factory.replace(",", "_")
    task_dir.mkdir()
    task = build_scale.shard_task_rss(task_dir, planned.tasks[0], planned.trained, emb, 1)
    served = _served(str(task_dir / "rss-1"))
    predicted = select.estimate_bytes(factory, n, dim)
    return {"factory": factory, "predicted_served_bytes": predicted,
            "measured_served_bytes": served["rss_growth_bytes"],
            "measured_over_predicted": round(served["rss_growth_bytes"] / predicted, 3),
            "index_file_bytes": task["shard0_index_bytes"],
            "ids_table_bytes": task["ids_table_bytes"],
            "build_peak_above_start_bytes": task["task_peak_rss_bytes"]
            - task["task_start_rss_bytes"],
            "build_peak_over_index": task["peak_rss_over_index"],
            "build_peak_over_index_and_ids": task["peak_rss_over_index_and_ids"]}


def run(quick: bool, write_vectors: Callable[[int, int, str], None]) -> dict[str, Any]:
    """``write_vectors(n, dim, uri)`` writes the embeddings run (``bench.scale`` passes its
    projected-GloVe writer; taking it as an argument keeps the two modules acyclic)."""
    from bench import harness

    n, dim = (20_000, 64) if quick or harness.smoke() else (50_000, 128)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-memory-"))
    emb = str(work / "embeddings")
    write_vectors(n, dim, emb)
    rows = []
    for factory in factories(n, dim):
        try:
            rows.append(one_factory(work, emb, factory, n, dim))
        except Exception as exc:  # one factory failing is reported; the others still run
            log.exception("memory model: %s failed", factory)
            rows.append({"factory": factory, "error": f"{type(exc).__name__}: {exc}"})
    return {"vectors": n, "dim": dim, "by_factory": rows}


def _load_main(index_root: str) -> None:
    from shard_server.index_store import Expectations, load_shard

    start = build_scale.status_kib("VmRSS")
    loaded = load_shard(index_root, 0, Expectations())
    grown = build_scale.status_kib("VmRSS") - start
    print(json.dumps({"count": loaded.manifest.count, "rss_growth_bytes": grown * 1024}))


if __name__ == "__main__":
    _load_main(sys.argv[1])
