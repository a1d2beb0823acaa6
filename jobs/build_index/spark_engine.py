"""Spark engine: one Spark task per shard (``parallelize(tasks, N).map(run_task)``).

Each task receives its small ``ShardTask`` descriptor; the trained index bytes (IVF centroids,
PQ codebooks: up to hundreds of MB) travel once per executor as a broadcast variable. Tasks read
their own rows from the Parquet run and write their own shard files, so nothing but the
manifests comes back to the driver.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.build_index.build import ShardOutcome, ShardTask, run_task
from jobs.spark_session import DEFAULT_MASTER, get_or_create_session


def run_spark(
    tasks: Sequence[ShardTask], trained: bytes, master: str | None = None
) -> list[ShardOutcome]:
    session = get_or_create_session(master or DEFAULT_MASTER, app_name="cbir-build-index")
    sc = session.sparkContext
    shared = sc.broadcast(trained)
    try:
        rdd = sc.parallelize(list(tasks), max(1, len(tasks)))
        return list(rdd.map(lambda task: run_task(task, shared.value)).collect())
    finally:
        shared.unpersist()
