"""The backfill driver: check -> plan -> run tasks (``jobs.engines``) -> manifest, written
last. Every mistake that can be known up front (numbers, the endpoint, an unwritable output,
an unreachable master, an empty input) fails before any image is fetched."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cbir import schema, storage
from cbir.embedding import DEFAULT_MODEL, describe_model
from cbir.errors import InvalidArgument, NotFound
from cbir.model_names import RUNTIME_NAMES
from cbir.options import nested, option
from jobs import engines
from jobs.embed import plan, sidecar
from jobs.embed.config import (
    DEFAULT_ENGINE,
    DEFAULT_IO_THREADS,
    DEFAULT_NUM_SHARDS,
    DEFAULT_OBJECTS_PER_TASK,
    BackfillConfig,
    EmbedTask,
    ObjectRef,
    TaskResult,
)
from jobs.embed.gpu import spark_gpu_conf
from jobs.embed.task import embed_and_commit
from jobs.engines import EngineOptions
from jobs.progress import Progress
from jobs.spark_session import DEFAULT_MASTER

log = logging.getLogger(__name__)

WorkFn = Callable[[EmbedTask, BackfillConfig], TaskResult]


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _default_engine() -> EngineOptions:
    return EngineOptions(engine=DEFAULT_ENGINE)


@dataclass(frozen=True)
class JobOptions:
    """The backfill's options, declared once: the CLI's flags are generated from these fields
    (``cbir.options``); ``build_config`` turns them into the frozen config tasks carry."""

    input: str = option(required=True, help="s3://BUCKET[/PREFIX] of images")
    output: str = option(required=True, help="output directory or s3:// URI")
    model: str = option(DEFAULT_MODEL, help="efficientnet_lite0 (1280-d) | resnet50 (2048-d)")
    weights: str | None = option(None, help="model weights (state_dict): local path or s3:// URI")
    device: str | None = option(None, help="cpu | cuda | cuda:N (default: cuda if any)")
    runtime: str = option("auto", choices=RUNTIME_NAMES,
                          help="auto (CUDA torch on a GPU, ONNX Runtime on CPU) | torch | "
                          "onnxruntime; every runtime gives the same embeddings (1e-4)")
    batch_size: int | None = option(None, positive=True,
                                    help="images per model call (default: the model's)")
    num_shards: int = option(DEFAULT_NUM_SHARDS, positive=True, help="fills shard = id %% N")
    objects_per_task: int | None = option(
        None, positive=True, help="objects per task = per Parquet part (default: sized from the "
        f"bucket and the cluster's cores, at most {DEFAULT_OBJECTS_PER_TASK})")
    io_threads: int = option(DEFAULT_IO_THREADS, positive=True,
                             help="fetch+decode threads per task")
    allow_empty: bool = option(False, help="succeed on an input with no objects (default: an "
                               "error, since it is usually a typo'd bucket or prefix)")
    # Filterable metadata (docs/filters.md).
    with_tags: bool = option(False, help="keep each object's tags as attributes tag_NAME (one "
                             "more request per object)")
    attributes: str | None = option(None, metavar="URI",
                                    help="sidecar table (Parquet or CSV, local or s3://) with a "
                                    "'key' column: its typed columns become filterable metadata")
    engine: EngineOptions = nested(_default_engine)

    def __post_init__(self) -> None:
        if self.device is not None and not _DEVICE.match(self.device):
            raise InvalidArgument(f"--device {self.device!r} is not a device: use cpu, cuda or "
                                  "cuda:N")


def build_config(opts: JobOptions) -> BackfillConfig:
    if not storage.is_s3(opts.input):
        raise InvalidArgument(f"--input must be s3://BUCKET[/PREFIX], got {opts.input!r}")
    storage.parse_s3(opts.input)  # a bucket name is required
    if opts.num_shards <= 0:
        raise InvalidArgument(f"--num-shards must be positive, got {opts.num_shards}")
    info = describe_model(opts.model, opts.weights)  # unknown model / missing weights fail here
    if opts.attributes:
        sidecar.load_sidecar(opts.attributes)  # a bad sidecar fails here, not in every task
    return BackfillConfig(
        input=opts.input, output=opts.output, model=info.name, model_version=info.version,
        dim=info.dim, weights=opts.weights, device=opts.device, runtime=opts.runtime,
        batch_size=opts.batch_size,
        num_shards=opts.num_shards, objects_per_task=opts.objects_per_task,
        io_threads=opts.io_threads, with_tags=opts.with_tags, attributes=opts.attributes,
    )


def _list(config: BackfillConfig, allow_empty: bool) -> list[ObjectRef]:
    exclude = plan.output_prefix_in(config.input, config.output)
    objects = list(plan.list_objects(config.input, exclude))
    if not objects and not allow_empty:
        raise NotFound(f"no objects under {config.input}: check the bucket and prefix "
                       "(pass --allow-empty to accept an empty input)")
    return objects


def _plan(config: BackfillConfig, options: EngineOptions, allow_empty: bool
          ) -> tuple[plan.ExistingOutput, list[EmbedTask], BackfillConfig]:
    existing = plan.scan_output(config.output)
    plan.check_compatible(existing, config)
    objects = _list(config, allow_empty)
    bucket = storage.parse_s3(config.input).bucket
    todo = sum(f"s3://{bucket}/{r.key}" not in existing.done_keys for r in objects)
    capacity = engines.capacity(options) if todo else engines.Capacity(1, None)
    per_task = config.objects_per_task or plan.objects_per_task(todo, capacity.parallelism)
    if config.torch_threads is None and capacity.threads_per_task is not None:
        config = dataclasses.replace(config, torch_threads=capacity.threads_per_task)
    tasks = plan.make_tasks(bucket, objects, existing.done_keys, per_task)
    log.info("%d objects listed, %d already done, %d tasks of <= %d objects on %d cores "
             "(%d parts exist)", len(objects), len(existing.done_keys), len(tasks), per_task,
             capacity.parallelism, len(existing.parts))
    return existing, tasks, config


def _error_reasons(results: Sequence[TaskResult]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(dict(r.error_reasons))
    return dict(sorted(counts.items()))


def _manifest(
    config: BackfillConfig, existing: plan.ExistingOutput, results: Sequence[TaskResult],
    engine: engines.Engine, seconds: float, driver_s3_retries: int = 0,
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


def check(config: BackfillConfig, options: EngineOptions) -> None:
    """The cheap checks, before listing a bucket or starting Spark."""
    storage.endpoint_url()  # a malformed AWS_ENDPOINT_URL
    storage.addressing_style()
    engines.check(options)  # Java, the master's form and reachability
    storage.check_writable(config.output)


def run_backfill(
    config: BackfillConfig, options: EngineOptions | None = None, show_progress: bool = True,
    allow_empty: bool = False, work_fn: WorkFn = embed_and_commit,
) -> schema.EmbedManifest:
    """``work_fn`` is the task body (``embed_and_commit``); tests wrap it to inject faults."""
    options = _with_gpu_resources(options or EngineOptions(), config)
    start = time.perf_counter()
    check(config, options)
    s3_retries_before = storage.S3_REQUESTS.retries()
    existing, tasks, config = _plan(config, options, allow_empty)
    driver_s3_retries = storage.S3_REQUESTS.retries() - s3_retries_before
    total = sum(len(t.objects) for t in tasks)
    with Progress(total, "img", "backfill", enabled=show_progress) as progress:
        finished = engines.run(tasks, work_fn, options, config,
                               units=_task_objects, progress=progress)
    results = [dataclasses.replace(f.result, attempt=f.attempt) for f in finished]
    manifest = _manifest(config, existing, results, options.engine,
                         time.perf_counter() - start, driver_s3_retries)
    # Last: the manifest is what makes the run visible downstream.
    schema.write_manifest(storage.join(config.output, schema.EMBED_MANIFEST), manifest)
    log.info("backfill done: %d images, %d errors, %d parts (%d new)", manifest.num_images,
             manifest.num_errors, len(manifest.parts), sum(r.written for r in results))
    return manifest


def _with_gpu_resources(options: EngineOptions, config: BackfillConfig) -> EngineOptions:
    """On a cluster with CUDA, Spark's GPU scheduling binds one GPU per task; the user's own
    --conf entries come last, so they win."""
    gpu = spark_gpu_conf(config.device, options.master or DEFAULT_MASTER)
    if options.engine != "spark" or not gpu:
        return options
    return dataclasses.replace(options, conf=(*gpu.items(), *options.conf))


def _task_objects(task: EmbedTask) -> int:
    return len(task.objects)
