"""The one distribution layer of the batch jobs: run small task descriptors through an injected
work function, sequentially in this process or as Spark tasks.

Both the backfill (``jobs.embed``) and the index build (``jobs.build_index``) call ``run``; they
know nothing of Spark. The Spark engine (``jobs.spark_engine``) is imported lazily, so the
sequential path never needs pyspark.

One error policy for every job and engine: a task raises. A typed ``CbirError`` other than
``Unavailable`` is permanent (bad input, model mismatch, id collision): Spark does not retry it,
and the driver re-raises the same error. ``Unavailable`` and anything unexpected (a crashed
worker, an OOM kill) are transient: Spark retries the task (``spark.task.maxFailures``) and, if
every attempt fails, the driver raises ``Unavailable`` with the task's last error line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from jobs.engine_types import ENGINES, Capacity, Engine, EngineOptions, Finished, Progress

__all__ = ["ENGINES", "Capacity", "Engine", "EngineOptions", "Finished", "Progress", "capacity",
           "check", "run", "run_partitioned"]

T = TypeVar("T")  # a task descriptor: small, picklable
S = TypeVar("S")  # what every task shares (config, trained index bytes): shipped once
R = TypeVar("R")  # a task's result


def check(options: EngineOptions) -> None:
    """The engine's cheap up-front checks: Java, the master's form, a reachable master."""
    if options.engine == "spark":
        from jobs.spark_session import DEFAULT_MASTER, check_java, check_master

        check_java()
        check_master(options.master or DEFAULT_MASTER)


def capacity(options: EngineOptions) -> Capacity:
    """Starts the Spark session (once; ``run`` reuses it) to learn the cluster's parallelism,
    so the planner can size tasks before anything runs."""
    if options.engine == "sequential":
        return Capacity(parallelism=1, threads_per_task=None)
    from jobs import spark_engine

    return spark_engine.capacity(options)


def run(
    tasks: Sequence[T],
    work_fn: Callable[[T, S], R],
    options: EngineOptions,
    shared: S,
    units: Callable[[T], int] = lambda _task: 1,
    progress: Progress | None = None,
) -> list[Finished[R]]:
    """``work_fn(task, shared)`` for every task, results in task order."""
    if not tasks:
        return []
    report = progress or (lambda _done: None)
    if options.engine == "sequential":
        return _run_sequential(tasks, work_fn, shared, units, report)
    from jobs import spark_engine

    return spark_engine.run(tasks, work_fn, options, shared, units, report)


def _run_sequential(
    tasks: Sequence[T], work_fn: Callable[[T, S], R], shared: S,
    units: Callable[[T], int], progress: Progress,
) -> list[Finished[R]]:
    results: list[Finished[R]] = []
    done = 0
    for task in tasks:
        results.append(Finished(work_fn(task, shared)))
        done += units(task)
        progress(done)
    return results


P = TypeVar("P")  # a routed payload (e.g. Arrow IPC bytes of one shard's rows of one part)


def run_partitioned(
    inputs: Sequence[T],
    route_fn: Callable[[T, S], Iterable[tuple[int, P]]],
    reduce_fn: Callable[[int, Iterable[P], S], R],
    num_keys: int,
    options: EngineOptions,
    shared: S,
    keys: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> list[Finished[R]]:
    """One pass over ``inputs``: ``route_fn`` sends each payload to a key in [0, num_keys);
    then ``reduce_fn(key, payloads, shared)`` once per key of ``keys`` (default: all), results
    in ``keys`` order. Payloads reach their reducer in no guaranteed order (a Spark shuffle does
    not keep one), so a reducer that needs an order carries it in the payload.

    Sequential: one pass spills each key's payloads to a local temp file, then each key is
    reduced from its spill. Spark: a real shuffle (``partitionBy(num_keys)``), one reduce task
    per key, each receiving only its own payloads."""
    wanted = list(range(num_keys)) if keys is None else list(keys)
    if not wanted:
        return []
    report = progress or (lambda _done: None)
    if options.engine == "sequential":
        from jobs import spill

        return spill.run_partitioned(inputs, route_fn, reduce_fn, wanted, shared, report)
    from jobs import spark_engine

    return spark_engine.run_partitioned(inputs, route_fn, reduce_fn, num_keys, wanted,
                                        options, shared, report)
