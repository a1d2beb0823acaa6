"""Execution engines for the backfill's tasks. Both run ``runner.run_task``; only the place it
runs differs. The Spark engine is imported lazily so the sequential path never needs pyspark."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult
from jobs.embed.runner import run_task

Engine = Literal["sequential", "spark"]
ENGINES: tuple[Engine, ...] = ("sequential", "spark")
Progress = Callable[[int], None]  # called with the number of tasks finished so far


def run_sequential(
    tasks: Sequence[EmbedTask], config: BackfillConfig, progress: Progress
) -> list[TaskResult]:
    results = []
    for task in tasks:
        results.append(run_task(task, config))
        progress(len(results))
    return results


def run_tasks(
    tasks: Sequence[EmbedTask], config: BackfillConfig, engine: Engine, master: str | None,
    progress: Progress,
) -> list[TaskResult]:
    if engine == "sequential":
        return run_sequential(tasks, config, progress)
    from jobs.embed.spark_engine import run_spark

    return run_spark(tasks, config, master, progress)
