"""The backfill's frozen config and task descriptors: small, picklable, shipped to executors."""

from __future__ import annotations

from dataclasses import dataclass

from cbir.limits import DEFAULT_LIMITS, Limits

DEFAULT_OBJECTS_PER_TASK = 256
DEFAULT_IO_THREADS = 8


@dataclass(frozen=True)
class BackfillConfig:
    input: str  # s3://bucket[/prefix]
    output: str  # local path or s3:// URI
    model: str
    model_version: str  # what the driver computed; executors must load the same
    dim: int
    weights: str | None = None
    device: str | None = None
    batch_size: int | None = None  # images per model call; None = the embedder's default
    num_shards: int = 1
    objects_per_task: int = DEFAULT_OBJECTS_PER_TASK
    io_threads: int = DEFAULT_IO_THREADS
    torch_threads: int | None = None  # per worker process; None = torch's default
    limits: Limits = DEFAULT_LIMITS
    # Filterable metadata (docs/filters.md): object tags (one more request per object) and a
    # sidecar table of typed attributes joined by key.
    with_tags: bool = False
    attributes: str | None = None


@dataclass(frozen=True)
class ObjectRef:
    key: str  # the object's key inside the bucket
    size: int  # bytes, from the listing (lets too-large/empty objects skip the GET)


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
