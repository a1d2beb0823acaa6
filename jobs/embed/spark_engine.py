"""Spark engine: one Spark task per planned task (``parallelize(tasks, len(tasks))``).

Only the small task descriptors and the frozen config are shipped; each Python worker builds
the model once (``mapper.embedder_for`` is cached per process and Spark reuses workers) and
reads/writes S3 itself with boto3/pyarrow, so no s3a/hadoop-aws is needed on the cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult
from jobs.embed.distribute import Progress
from jobs.embed.gpu import spark_gpu_conf
from jobs.embed.runner import run_task
from jobs.spark_session import DEFAULT_MASTER, get_or_create_session

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)


def _run_on_executor(task: EmbedTask, config: BackfillConfig) -> TaskResult:
    from pyspark import TaskContext

    result = run_task(task, config)
    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    return dataclasses.replace(result, attempt=attempt)


def _threads_per_task(master: str, parallelism: int, conf_cpus: str | None) -> int:
    """Local mode runs ``parallelism`` workers on this machine's cores; a cluster gives each
    task ``spark.task.cpus`` cores."""
    if master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, parallelism))
    return max(1, int(conf_cpus or 1))


def _watch(sc: SparkContext, group: str, progress: Progress, stop: threading.Event) -> None:
    """Poll Spark's status tracker so the driver's progress bar moves while collect() blocks."""
    tracker = sc.statusTracker()
    while not stop.wait(0.5):
        done = 0
        for job_id in tracker.getJobIdsForGroup(group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else ():
                stage = tracker.getStageInfo(stage_id)
                done += stage.numCompletedTasks if stage else 0
        progress(done)


def run_spark(
    tasks: Sequence[EmbedTask], config: BackfillConfig, master: str | None, progress: Progress
) -> list[TaskResult]:
    if not tasks:
        return []
    master = master or DEFAULT_MASTER
    session = get_or_create_session(master, app_name="cbir-backfill",
                                    conf=spark_gpu_conf(config.device, master))
    sc = session.sparkContext
    if config.torch_threads is None:
        threads = _threads_per_task(sc.master or "", sc.defaultParallelism,
                                    sc.getConf().get("spark.task.cpus"))
        config = dataclasses.replace(config, torch_threads=threads)
    log.info("spark %s: %d tasks, %d torch threads per task", sc.master, len(tasks),
             config.torch_threads)
    frozen = config  # captured by the closure: pickled with each task, it is tiny
    group = f"cbir-backfill-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"cbir backfill: {len(tasks)} tasks")
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(sc, group, progress, stop), daemon=True)
    watcher.start()
    try:
        rdd = sc.parallelize(list(tasks), len(tasks))
        results: list[TaskResult] = rdd.map(lambda t: _run_on_executor(t, frozen)).collect()
    finally:
        stop.set()
        watcher.join()
    progress(len(results))
    return results
