"""Driver-side planning: list the bucket (or read its S3 Inventory report), leave out what the
output already holds, and split the rest into small deterministic tasks whose part names are
derived from their content.

Resume and incremental runs fall out of that: a key already in a committed part (or recorded
as an error) is never planned again, so re-runs add nothing and a bucket that grew yields tasks
holding only the new keys, under new part names.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from cbir import schema, storage
from cbir.errors import FailedPrecondition, InvalidArgument, ModelMismatch
from jobs.embed.config import DEFAULT_OBJECTS_PER_TASK, BackfillConfig, EmbedTask, ObjectRef
from jobs.embed.inventory import inventory_objects

log = logging.getLogger(__name__)

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# Tasks per core of the engine: more than one, so a slow task does not leave the other cores
# idle at the end; not many more, since each task is one Parquet part.
TASKS_PER_CORE = 3


@dataclass
class ExistingOutput:
    """What a previous run (finished or not) left at the output."""

    parts: dict[str, int] = field(default_factory=dict)  # part name -> rows
    error_parts: dict[str, int] = field(default_factory=dict)  # "_errors/<part>" -> rows
    done_keys: set[str] = field(default_factory=set)  # full s3:// URIs
    model_versions: set[str] = field(default_factory=set)
    manifest: schema.EmbedManifest | None = None


def part_name(bucket: str, objects: Iterable[ObjectRef]) -> str:
    h = hashlib.sha256()
    for ref in objects:
        h.update(f"s3://{bucket}/{ref.key}\n".encode())
    return f"{PART_PREFIX}{h.hexdigest()[:24]}{PART_SUFFIX}"


def list_objects(input_uri: str, exclude_prefix: str | None = None) -> Iterator[ObjectRef]:
    """Every object under the input prefix (paginated, with sizes and ETags), folder markers
    and the job's own output (when it lives inside the input) left out."""
    for obj in storage.list_objects(input_uri):
        if obj.key.endswith("/") or (exclude_prefix and obj.key.startswith(exclude_prefix)):
            continue
        yield ObjectRef(obj.key, obj.size, obj.etag)


def source_objects(input_uri: str, exclude_prefix: str | None,
                   inventory: str | None) -> Iterator[ObjectRef]:
    """The input's objects: from an S3 Inventory report when one is given (no LIST calls: a
    billion-object bucket is a million of them), else by listing the prefix. Either way the
    done keys are then left out, so an incremental run reads the report, not the bucket."""
    if inventory:
        return inventory_objects(inventory, input_uri, exclude_prefix)
    return list_objects(input_uri, exclude_prefix)


def objects_per_task(todo: int, parallelism: int, cap: int = DEFAULT_OBJECTS_PER_TASK) -> int:
    """Task size from the work and the engine: at least TASKS_PER_CORE tasks per core when
    there are enough objects (so every executor works), at most ``cap`` objects per task."""
    if parallelism <= 1:
        return cap
    return max(1, min(cap, -(-todo // (parallelism * TASKS_PER_CORE))))


def output_prefix_in(input_uri: str, output_uri: str) -> str | None:
    """The output's key prefix when it lives in the input bucket (so it is not embedded)."""
    if not storage.is_s3(output_uri):
        return None
    src, dst = storage.parse_s3(input_uri), storage.parse_s3(output_uri)
    if src.bucket != dst.bucket:
        return None
    if not dst.key.strip("/"):
        raise InvalidArgument("--output must not be the root of the input bucket: use a prefix")
    return f"{dst.key.rstrip('/')}/"


def make_tasks(
    bucket: str, objects: Iterable[ObjectRef], done: set[str], per_task: int
) -> list[EmbedTask]:
    """Sorted, not-yet-done objects in chunks of ``per_task``; same input -> same tasks."""
    if per_task <= 0:
        raise InvalidArgument(f"--objects-per-task must be positive, got {per_task}")
    todo = sorted((r for r in objects if f"s3://{bucket}/{r.key}" not in done),
                  key=lambda r: r.key)
    tasks = []
    for i in range(0, len(todo), per_task):
        chunk = tuple(todo[i : i + per_task])
        tasks.append(EmbedTask(part_name(bucket, chunk), bucket, chunk))
    return tasks


def _read_keys(uri: str) -> tuple[list[str], bytes | None]:
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, columns=["key"], filesystem=fs)
    meta = table.schema.metadata or {}
    return table.column("key").to_pylist(), meta.get(schema.META_MODEL_VERSION)


def scan_output(output: str) -> ExistingOutput:
    """Read the key column of every committed part and error part (in parallel)."""
    found = ExistingOutput()
    names = list(storage.list_names(output))
    parquet = [n for n in names if n.endswith(PART_SUFFIX)]
    parts = [n for n in parquet if "/" not in n and n.startswith(PART_PREFIX)]
    errors = [n for n in parquet if n.startswith(f"{schema.ERRORS_DIR}/{PART_PREFIX}")]
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda n: _read_keys(storage.join(output, n)), parts + errors))
    for i, (name, (keys, version)) in enumerate(zip(parts + errors, loaded, strict=True)):
        is_part = i < len(parts)  # index, not `name in parts`: that is quadratic in parts
        (found.parts if is_part else found.error_parts)[name] = len(keys)
        found.done_keys.update(keys)
        if is_part and version is not None:
            found.model_versions.add(version.decode())
    if schema.EMBED_MANIFEST in names:  # the listing already says so: no HEAD request
        found.manifest = schema.read_manifest(storage.join(output, schema.EMBED_MANIFEST),
                                              schema.EmbedManifest)
        found.model_versions.add(found.manifest.model_version)
    return found


def check_compatible(existing: ExistingOutput, config: BackfillConfig) -> None:
    """Refuse to mix vectors of two models (or two shardings) in one output."""
    other = existing.model_versions - {config.model_version}
    if other:
        raise ModelMismatch(
            f"{config.output} holds embeddings of model version {sorted(other)[0]} but "
            f"{config.model} is version {config.model_version}: use a new --output"
        )
    manifest = existing.manifest
    old_shards = (manifest.model_extra or {}).get("num_shards") if manifest else None
    if old_shards is not None and int(old_shards) != config.num_shards:
        raise FailedPrecondition(
            f"{config.output} was written with --num-shards {old_shards}, "
            f"not {config.num_shards}: use the same value or a new --output"
        )
