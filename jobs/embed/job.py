"""The backfill driver: plan -> run tasks (sequential or Spark) -> manifest, written last."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from cbir import schema, storage
from cbir.embedding import DEFAULT_MODEL, describe_model
from cbir.errors import InvalidArgument
from jobs.embed import plan, sidecar
from jobs.embed.config import (
    DEFAULT_IO_THREADS,
    DEFAULT_OBJECTS_PER_TASK,
    BackfillConfig,
    EmbedTask,
    TaskResult,
)
from jobs.embed.distribute import Engine, run_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOptions:
    """What the CLI gives; ``build_config`` turns it into the frozen config tasks carry."""

    input: str
    output: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str | None = None
    batch_size: int | None = None
    num_shards: int = 1
    objects_per_task: int = DEFAULT_OBJECTS_PER_TASK
    io_threads: int = DEFAULT_IO_THREADS
    engine: Engine = "spark"
    master: str | None = None
    with_tags: bool = False
    attributes: str | None = None  # sidecar table URI (Parquet or CSV), joined by key


def build_config(opts: JobOptions) -> BackfillConfig:
    if not storage.is_s3(opts.input):
        raise InvalidArgument(f"--input must be s3://BUCKET[/PREFIX], got {opts.input!r}")
    if opts.num_shards <= 0:
        raise InvalidArgument(f"--num-shards must be positive, got {opts.num_shards}")
    info = describe_model(opts.model, opts.weights)  # unknown model / missing weights fail here
    if opts.attributes:
        sidecar.load_sidecar(opts.attributes)  # a bad sidecar fails here, not in every task
    return BackfillConfig(
        input=opts.input, output=opts.output, model=info.name, model_version=info.version,
        dim=info.dim, weights=opts.weights, device=opts.device, batch_size=opts.batch_size,
        num_shards=opts.num_shards, objects_per_task=opts.objects_per_task,
        io_threads=opts.io_threads, with_tags=opts.with_tags, attributes=opts.attributes,
    )


def _plan(config: BackfillConfig) -> tuple[plan.ExistingOutput, list[EmbedTask]]:
    existing = plan.scan_output(config.output)
    plan.check_compatible(existing, config)
    exclude = plan.output_prefix_in(config.input, config.output)
    objects = list(plan.list_objects(config.input, exclude))
    bucket = storage.parse_s3(config.input).bucket
    tasks = plan.make_tasks(bucket, objects, existing.done_keys, config.objects_per_task)
    log.info("%d objects listed, %d already done, %d tasks to run (%d parts exist)",
             len(objects), len(existing.done_keys), len(tasks), len(existing.parts))
    return existing, tasks


def _error_reasons(results: Sequence[TaskResult]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(dict(r.error_reasons))
    return dict(sorted(counts.items()))


def _manifest(
    config: BackfillConfig, existing: plan.ExistingOutput, results: Sequence[TaskResult],
    engine: Engine, seconds: float, driver_s3_retries: int = 0,
) -> schema.EmbedManifest:
    parts = dict(existing.parts)
    errors = dict(existing.error_parts)
    for r in results:  # skipped tasks report the rows their existing part holds
        parts[r.part] = r.num_images
        if r.num_errors:
            errors[f"{schema.ERRORS_DIR}/{r.part}"] = r.num_errors
    stats = {
        "num_shards": config.num_shards, "engine": engine, "tasks_run": len(results),
        "parts_written": sum(r.written for r in results),
        "parts_reused": len(existing.parts),
        "tasks_skipped": sum(not r.written for r in results),
        # Spark attempt number of each task's successful attempt = its failed attempts before.
        "task_retries": sum(r.attempt for r in results),
        "fetch_retries": sum(r.fetch_retries for r in results),
        "s3_retries": driver_s3_retries + sum(r.s3_retries for r in results),
        "bytes_read": sum(r.bytes_read for r in results),
        # Every task of this run was planned from keys no committed part held, so a task found
        # committed (a Spark retry after the commit) still did its work in this run.
        "images_this_run": sum(r.num_images for r in results),
        "errors_this_run": sum(r.num_errors for r in results),
        "errors_by_reason": _error_reasons(results),
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return schema.EmbedManifest.model_validate({
        "model": config.model, "model_version": config.model_version, "dim": config.dim,
        "num_images": sum(parts.values()), "num_errors": sum(errors.values()),
        "input": config.input, "parts": sorted(parts), "error_parts": sorted(errors), **stats,
    })


def run_backfill(
    config: BackfillConfig, engine: Engine = "spark", master: str | None = None,
    show_progress: bool = True,
) -> schema.EmbedManifest:
    start = time.perf_counter()
    s3_retries_before = storage.S3_REQUESTS.retries()
    existing, tasks = _plan(config)
    driver_s3_retries = storage.S3_REQUESTS.retries() - s3_retries_before
    with tqdm(total=len(tasks), unit="task", desc="backfill", disable=not show_progress) as bar:

        def progress(done: int) -> None:
            bar.update(max(0, done - bar.n))

        results = run_tasks(tasks, config, engine, master, progress)
    manifest = _manifest(config, existing, results, engine, time.perf_counter() - start,
                         driver_s3_retries)
    # Last: the manifest is what makes the run visible downstream.
    schema.write_manifest(storage.join(config.output, schema.EMBED_MANIFEST), manifest)
    log.info("backfill done: %d images, %d errors, %d parts (%d new)", manifest.num_images,
             manifest.num_errors, len(manifest.parts), sum(r.written for r in results))
    return manifest
