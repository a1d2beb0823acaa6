"""The Spark engine: one Spark task per planned task (``parallelize(tasks, len(tasks))``).

Only the small task descriptors travel with the tasks; what they share (the frozen config, the
trained index bytes: up to hundreds of MB) travels once per executor as a broadcast. Executors
read and write S3 themselves (boto3/pyarrow), so no s3a/hadoop-aws is needed on the cluster.

Executors do not inherit the driver's environment: the S3 endpoint, region and addressing style
are shipped with the tasks (``SparkContext.environment``, which PySpark hands to every Python
worker it starts), never secrets unless ``forward_aws_credentials`` says so.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cbir.errors import CbirError, Unavailable
from jobs.engine_types import Capacity, EngineOptions, Finished, Progress
from jobs.spark_session import DEFAULT_MASTER, MAX_TASK_FAILURES, get_or_create_session

if TYPE_CHECKING:
    from pyspark import Accumulator, SparkContext
    from pyspark.broadcast import Broadcast
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

# Not secrets: where S3 is and how to address it. Executors need them to reach a non-AWS
# endpoint (MinIO, moto) or a bucket in another region.
S3_LOCATION_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                   "AWS_DEFAULT_REGION", "AWS_S3_ADDRESSING_STYLE")
# Static keys: shipped only with --forward-aws-credentials.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_EXECUTOR_ENV = "spark.executorEnv."


@dataclass(frozen=True)
class _Outcome(Generic[R]):
    result: R | None
    attempt: int
    error: CbirError | None = None  # a permanent, typed error: re-raised on the driver


def executor_env(options: EngineOptions) -> dict[str, str]:
    """The driver's S3 location (and, only when asked, its static keys) for the executors;
    a ``--conf spark.executorEnv.X`` the user gave wins."""
    names = S3_LOCATION_ENV + (CREDENTIAL_ENV if options.forward_aws_credentials else ())
    given = {key.removeprefix(_EXECUTOR_ENV) for key, _ in options.conf
             if key.startswith(_EXECUTOR_ENV)}
    return {n: os.environ[n] for n in names if os.environ.get(n) and n not in given}


def session_for(options: EngineOptions) -> SparkSession:
    conf = dict(options.conf)
    # Location only: these land in the Spark conf, which the UI and event logs show.
    for name, value in executor_env(EngineOptions(conf=options.conf)).items():
        conf.setdefault(f"{_EXECUTOR_ENV}{name}", value)
    return get_or_create_session(options.master or DEFAULT_MASTER, options.app_name, conf,
                                 options.verbose)


def capacity(options: EngineOptions) -> Capacity:
    sc = session_for(options).sparkContext
    parallelism = max(1, sc.defaultParallelism)
    if (sc.master or "").startswith("local"):  # the tasks share this machine's cores
        threads = max(1, (os.cpu_count() or 1) // parallelism)
    else:  # a cluster gives each task spark.task.cpus cores
        threads = max(1, int(sc.getConf().get("spark.task.cpus") or 1))
    return Capacity(parallelism, threads)


def _execute(task: T, work_fn: Callable[[T, S], R], shared: Broadcast[S],
             done: Accumulator[int], units: Callable[[T], int]) -> _Outcome[R]:
    """On the executor: run one task under the engines' error policy."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    try:
        result = work_fn(task, shared.value)
    except Unavailable:
        raise  # transient: Spark retries the task on another attempt
    except CbirError as exc:
        return _Outcome(None, attempt, exc)
    done.add(units(task))  # merged on the driver as each task succeeds: live progress
    return _Outcome(result, attempt)


def _watch(done: Accumulator[int], progress: Progress, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        progress(done.value)


def task_failure_line(text: str) -> str:
    """The one line that says why a Spark job failed: the Python exception of the last
    failed attempt (after its traceback), else Spark's own reason."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    for line in lines[starts[-1] + 1:] if starts else ():
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip().removeprefix("cbir.errors.")
    reason = next((ln for ln in lines if "Job aborted" in ln or "Exception:" in ln), text)
    return reason.strip()[:300]


def _collect(sc: SparkContext, rdd: Any, group: str) -> list[_Outcome[Any]]:
    try:
        return list(rdd.collect())
    except Exception as exc:  # py4j's Java error: one line, not 200 lines of Java stack
        raise Unavailable(f"a task failed {MAX_TASK_FAILURES} times; last error: "
                          f"{task_failure_line(str(exc))}") from None
    finally:
        sc.cancelJobGroup(group)


def run(
    tasks: Sequence[T], work_fn: Callable[[T, S], R], options: EngineOptions, shared: S,
    units: Callable[[T], int], progress: Progress,
) -> list[Finished[R]]:
    sc = session_for(options).sparkContext
    sc.environment.update(executor_env(options))  # every Python worker started from now on
    log.info("spark %s: %d tasks on %d cores", sc.master, len(tasks), sc.defaultParallelism)
    broadcast = sc.broadcast(shared)
    done = sc.accumulator(0)
    group = f"{options.app_name}-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"{options.app_name}: {len(tasks)} tasks")
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(done, progress, stop), daemon=True)
    watcher.start()
    try:
        rdd = sc.parallelize(list(tasks), len(tasks)).map(
            lambda task: _execute(task, work_fn, broadcast, done, units))
        outcomes = _collect(sc, rdd, group)
    finally:
        stop.set()
        watcher.join()
        broadcast.unpersist()
    progress(done.value)
    failed = next((o.error for o in outcomes if o.error is not None), None)
    if failed is not None:
        raise failed
    return [Finished(o.result, o.attempt) for o in outcomes]  # type: ignore[arg-type]


@dataclass(frozen=True)
class _RouteFailed:
    """A permanent error while routing an input: shipped to every wanted reducer, so the
    driver re-raises it typed instead of Spark retrying a task that cannot succeed."""

    error: CbirError


def _route(item: T, route_fn: Callable[[T, S], Iterable[tuple[int, Any]]], shared: S,
           wanted: frozenset[int]) -> list[tuple[int, Any]]:
    try:
        return [(key, payload) for key, payload in route_fn(item, shared) if key in wanted]
    except Unavailable:
        raise
    except CbirError as exc:
        return [(key, _RouteFailed(exc)) for key in wanted]


def _reduce(key: int, pairs: Iterable[tuple[int, Any]], reduce_fn: Callable[[int, Any, S], R],
            shared: S, done: Accumulator[int]) -> _Outcome[R]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0

    def payloads() -> Iterable[Any]:
        for _, payload in pairs:
            if isinstance(payload, _RouteFailed):
                raise payload.error  # before the reducer can commit anything partial
            yield payload

    try:
        result = reduce_fn(key, payloads(), shared)
    except Unavailable:
        raise
    except CbirError as exc:
        return _Outcome(None, attempt, exc)
    done.add(1)
    return _Outcome(result, attempt)


def run_partitioned(
    inputs: Sequence[T], route_fn: Callable[[T, S], Iterable[tuple[int, Any]]],
    reduce_fn: Callable[[int, Any, S], R], num_keys: int, keys: Sequence[int],
    options: EngineOptions, shared: S, progress: Progress,
) -> list[Finished[R]]:
    """A real shuffle: one map task per input routes payloads by key, ``partitionBy(num_keys)``
    moves each key's payloads to its own reduce task (partition ``k`` holds key ``k``)."""
    sc = session_for(options).sparkContext
    sc.environment.update(executor_env(options))
    log.info("spark %s: %d inputs -> %d keys on %d cores", sc.master, len(inputs), len(keys),
             sc.defaultParallelism)
    broadcast = sc.broadcast(shared)
    done = sc.accumulator(0)
    wanted = frozenset(keys)
    group = f"{options.app_name}-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"{options.app_name}: {len(inputs)} inputs -> {len(keys)} keys")
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(done, progress, stop), daemon=True)
    watcher.start()
    try:
        rdd = (sc.parallelize(list(inputs), max(1, len(inputs)))
               .flatMap(lambda item: _route(item, route_fn, broadcast.value, wanted))
               .partitionBy(num_keys, lambda key: key)
               .mapPartitionsWithIndex(
                   lambda key, pairs: [(key, _reduce(key, pairs, reduce_fn, broadcast.value,
                                                     done))] if key in wanted else []))
        by_key: dict[int, _Outcome[R]] = dict(_collect(sc, rdd, group))  # type: ignore[arg-type]
    finally:
        stop.set()
        watcher.join()
        broadcast.unpersist()
    progress(done.value)
    outcomes = [by_key[k] for k in keys]
    failed = next((o.error for o in outcomes if o.error is not None), None)
    if failed is not None:
        raise failed
    return [Finished(o.result, o.attempt) for o in outcomes]  # type: ignore[arg-type]
