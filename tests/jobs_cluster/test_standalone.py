"""The backfill and build-index on a REAL Spark standalone cluster (a master and two workers on
127.0.0.1, started here from pyspark's jars), against moto, through the real CLI in a separate
driver process, as a user runs them. Both workers must have run tasks of both jobs, and the
rows must equal a sequential run's.

The workers do not know the S3 endpoint: the jobs ship it to their executors. One driver
session runs both jobs (``cbir.cli.main`` twice in one process) to keep the test short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cbir import index_layout, storage
from cbir.schema import ShardManifest, read_manifest
from jobs.build_index.build import BuildConfig, build_index
from jobs.embed.job import run_backfill
from tests.embedding import odd_images as odd
from tests.jobs_cluster.standalone import standalone_cluster
from tests.jobs_embed.conftest import SEQUENTIAL, config_for, put, small_image
from tests.jobs_embed.helpers import read_embeddings, vectors

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2

_DRIVER = textwrap.dedent("""
    import sys
    from cbir.cli import main
    split = sys.argv.index("--then")
    rc = main(sys.argv[1:split])
    sys.exit(rc or main(sys.argv[split + 1:]))
""")


def _fill(bucket: str) -> int:
    from demo.photos import bundled_photos

    photos = {p.name: p for p in bundled_photos()}
    objects = {f"img/{n}.jpg": odd.save(odd.small(photos[n].pixels, 160), "JPEG")
               for n in ("chelsea", "coffee", "rocket", "astronaut")}
    objects.update({f"img/noise{i}.png": small_image(i) for i in range(3)})
    objects["img/not-an-image.jpg"] = b"hello"
    for key, data in objects.items():
        put(bucket, key, data)
    return len(objects)


def _shards(root: str) -> list[ShardManifest]:
    return [read_manifest(index_layout.shard_file(root, s, "manifest.json"), ShardManifest)
            for s in range(SHARDS)]


def test_backfill_and_build_index_on_a_standalone_cluster(
    bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    _fill(bucket)
    out = f"out-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=out)
    emb, index = f"s3://{out}/emb", f"s3://{out}/index"
    with standalone_cluster(tmp_path) as cluster:
        engine = ["--engine", "spark", "--master", cluster.master_url,
                  # every executor registered before the first task: both must get work
                  "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
                  "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
                  "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.executor.memory=600m"]
        argv = [sys.executable, "-c", _DRIVER,
                "backfill", "--input", f"s3://{bucket}/img", "--output", emb,
                "--device", "cpu", "--no-progress", *engine, "--then",
                "build-index", "--embeddings", emb, "--output", index,
                "--shards", str(SHARDS), "--index", "Flat", "--no-progress", *engine]
        t0 = time.monotonic()
        run = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        cluster.timings["backfill_and_build_s"] = round(time.monotonic() - t0, 1)
        assert run.returncode == 0, run.stderr[-3000:]
        # Spark's and Java's start-up logging is hidden without -v (log4j at ERROR).
        noise = [line for line in run.stderr.splitlines()
                 if " WARN " in line or " INFO " in line or "default log level" in line]
        assert noise == [], noise[:5]
        by_worker = cluster.stages_by_worker()
    print(f"\nstandalone cluster timings: {cluster.timings}; stages per worker: {by_worker}")
    stages = sorted(set().union(*by_worker))
    # The backfill is one stage; build-index two (the map stage routing rows to shards, then
    # the shuffle's per-shard stage). Both workers ran backfill tasks and build tasks.
    assert len(stages) == 3, stages
    backfill, build = stages[0], set(stages[1:])
    assert all(backfill in ran and ran & build for ran in by_worker), by_worker

    # The same input, sequentially in this process: the same rows.
    seq = config_for(f"s3://{bucket}/img", f"s3://{out}/seq", per_task=3)
    manifest = run_backfill(seq, SEQUENTIAL, show_progress=False)
    cluster_rows, seq_rows = read_embeddings(emb), read_embeddings(seq.output)
    assert manifest.num_images == cluster_rows.num_rows == 7
    for col in ("image_id", "key", "width", "height", "bytes"):
        assert cluster_rows.column(col).to_pylist() == seq_rows.column(col).to_pylist(), col
    assert np.abs(vectors(cluster_rows) - vectors(seq_rows)).max() < 1e-5
    # The index the cluster built is the one a sequential build of its embeddings gives.
    top = build_index(BuildConfig(embeddings=emb, output=f"s3://{out}/seq-index",
                                  num_shards=SHARDS, factory="Flat"), show_progress=False)
    assert top is not None and top.count == 7
    assert ([m.checksum for m in _shards(index)]
            == [m.checksum for m in _shards(f"s3://{out}/seq-index")])
