"""The backfill's frozen config and task descriptors: small, picklable, shipped to executors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cbir.errors import InvalidArgument
from cbir.limits import DEFAULT_LIMITS, Limits

DEFAULT_OBJECTS_PER_TASK = 256  # the most objects one task (= one Parquet part) gets
DEFAULT_IO_THREADS = 8
DEFAULT_NUM_SHARDS = 1
DEFAULT_ENGINE: Literal["sequential", "spark"] = "spark"  # the heavy job: Spark unless told


@dataclass(frozen=True)
class BackfillConfig:
    input: str  # s3://bucket[/prefix]
    output: str  # local path or s3:// URI
    model: str
    model_version: str  # what the driver computed; executors must load the same
    dim: int
    weights: str | None = None
    device: str | None = None
    runtime: str = "auto"  # auto | torch | onnxruntime (cbir.embedding.runtimes)
    batch_size: int | None = None  # images per model call; None = the embedder's default
    num_shards: int = DEFAULT_NUM_SHARDS
    # None: sized from the bucket and the engine's parallelism (at most the default), so a
    # small bucket still gives every executor work.
    objects_per_task: int | None = None
    io_threads: int = DEFAULT_IO_THREADS
    torch_threads: int | None = None  # per worker process; None = torch's default
    limits: Limits = DEFAULT_LIMITS
    # Filterable metadata (docs/filters.md): object tags (one more request per object) and a
    # sidecar table of typed attributes joined by key.
    with_tags: bool = False
    attributes: str | None = None

    def __post_init__(self) -> None:
        # A batch of <= 0 images embeds nothing yet commits an empty part that re-runs skip:
        # the images would never be embedded. Refuse every such number before any work.
        for name in ("batch_size", "objects_per_task", "torch_threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidArgument(f"{name} must be positive, got {value}")
        for name in ("num_shards", "io_threads", "dim"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class ObjectRef:
    key: str  # the object's key inside the bucket
    size: int  # bytes, from the listing (lets too-large/empty objects skip the GET)
    etag: str = ""  # from the listing: tells a later change of the object apart


@dataclass(frozen=True)
class EmbedTask:
    part: str  # "part-<hash of the task's URIs>.parquet": stable, so re-runs can resume
    bucket: str
    objects: tuple[ObjectRef, ...]

    def uri(self, ref: ObjectRef) -> str:
        return f"s3://{self.bucket}/{ref.key}"


@dataclass(frozen=True)
class TaskResult:
    part: str
    written: bool  # False: the part already existed (resumed / retried after a commit)
    num_images: int = 0
    num_errors: int = 0
    bytes_read: int = 0
    fetch_retries: int = 0  # image GETs: botocore request retries + re-GETs after a cut body
    s3_retries: int = 0  # every S3 request the task made (GET, HEAD, PUT) retried by botocore
    error_reasons: tuple[tuple[str, int], ...] = ()  # (reason, count) of the task's bad objects
    attempt: int = 0  # Spark's attempt number (0 = first try)
    seconds: float = 0.0
