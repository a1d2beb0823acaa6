"""The index build: train once on a sample, then one index per shard from the trained one.

``build_index`` (driver) reads the embeddings manifest, picks the factory, trains the empty
index and serialises it, then runs ``run_task`` once per shard - sequentially or as Spark tasks
(same function, same inputs: a small ``ShardTask`` descriptor plus the trained index bytes).
Each task writes ``shard=NNN/{index.faiss, ids.parquet, metadata.parquet, manifest.json}``
(manifest last); the driver writes the top-level ``manifest.json`` after every shard committed.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, replace

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import errors, index_layout, storage
from cbir.schema import (
    INDEX_MANIFEST,
    EmbedManifest,
    IndexManifest,
    ShardManifest,
    read_manifest,
    write_manifest,
)
from jobs.build_index import manifest as manifests
from jobs.build_index import metadata, reader, select, tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    embeddings: str
    output: str
    num_shards: int
    factory: str | None = None  # None: choose automatically (select.choose_index)
    engine: str = "sequential"  # "sequential" | "spark"
    master: str | None = None  # Spark master; None = local[*]
    memory_budget_bytes: int = 8 * select.GIB
    target_recall: float = 0.95
    train_size: int = 200_000  # vectors sampled for training (IVF centroids, PQ codebooks)
    tune_queries: int = 500
    seed: int = 1234
    faiss_threads: int = 0  # per task; 0 = Faiss's default (all cores)
    # Build only this shard (one pod of a Kubernetes Indexed Job); None = every shard.
    shard_only: int | None = None


@dataclass(frozen=True)
class ShardTask:
    """What one shard build needs; small enough to ship to a Spark executor."""

    shard: int
    num_shards: int
    embeddings: str
    output: str
    dim: int
    factory: str  # the Faiss factory string
    index_version: str
    model: str
    model_version: str
    target_recall: float
    tune_queries: int
    seed: int
    faiss_threads: int
    endpoint_url: str | None  # S3 endpoint the driver uses (not a credential)
    attribute_names: tuple[str, ...] = ()  # of the whole run: the same columns on every shard


@dataclass(frozen=True)
class ShardOutcome:
    """A task's result; typed errors travel as (class name, message) so Spark keeps them."""

    shard: int
    manifest: ShardManifest | None = None
    error: tuple[str, str] | None = None

    def unwrap(self) -> ShardManifest:
        if self.error is not None:
            name, message = self.error
            exc_type = getattr(errors, name, errors.CbirError)
            raise exc_type(f"shard {self.shard}: {message}")
        assert self.manifest is not None
        return self.manifest


def _empty_index(dim: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise errors.InvalidArgument(f"bad index factory {factory!r}: {exc}") from exc


def train(dataset: reader.ds.Dataset, dim: int, factory: str, count: int,
          config: BuildConfig) -> bytes:
    """The trained, empty index, serialised (the same bytes seed every shard)."""
    index = _empty_index(dim, factory)
    if not index.is_trained:
        sample = reader.read_sample(dataset, dim, config.train_size / max(count, 1))
        log.info("training %s on %d sampled vectors", factory, len(sample))
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise errors.InvalidArgument(
                f"cannot train {factory!r} on {len(sample)} vectors: {exc}"
            ) from exc
    return bytes(faiss.serialize_index(index))


def _shard_manifest(task: ShardTask, rows: reader.Rows, data: bytes,
                    tuned: tune.TuneResult) -> ShardManifest:
    return ShardManifest(
        shard=task.shard, num_shards=task.num_shards, count=len(rows), dim=task.dim,
        metric="ip", factory=task.factory, search_params=tuned.search_params,
        model=task.model, model_version=task.model_version, index_version=task.index_version,
        checksum=index_layout.sha256_hex(data), recall_at_10=tuned.recall_at_10,
    )


def _ids_parquet(rows: reader.Rows) -> bytes:
    table = pa.table({"image_id": pa.array(rows.ids, pa.int64()), "key": rows.keys},
                     schema=index_layout.IDS_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def committed_shard(output: str, shard: int, version: str) -> ShardManifest | None:
    """The shard's manifest if ``version`` of it is committed (a re-run does not rebuild it)."""
    uri = index_layout.shard_file(output, shard, INDEX_MANIFEST)
    if not storage.exists(uri):
        return None
    done = read_manifest(uri, ShardManifest)
    return done if done.index_version == version else None


def _tune(task: ShardTask, index: faiss.Index, rows: reader.Rows) -> tune.TuneResult:
    if select.is_exact(task.factory):
        return tune.TuneResult({}, 1.0, True)  # brute force: exact by construction
    rng = np.random.default_rng(task.seed + task.shard)
    query_rows = rng.choice(len(rows), size=min(task.tune_queries, len(rows)), replace=False)
    return tune.tune(index, rows.vectors, rows.ids, query_rows, task.target_recall)


def build_shard(task: ShardTask, trained: bytes) -> ShardManifest:
    if (done := committed_shard(task.output, task.shard, task.index_version)) is not None:
        log.info("shard %d already built (%s), skipping", task.shard, task.index_version)
        return done
    dataset = reader.open_dataset(task.embeddings, task.dim)
    rows = reader.read_shard(dataset, task.dim, task.shard, task.num_shards)
    reader.check_vectors(rows, f"shard {task.shard}")
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    if len(rows):
        index.add_with_ids(rows.vectors, rows.ids)
    tuned = _tune(task, index, rows)
    data = bytes(faiss.serialize_index(index))
    shard_root = index_layout.shard_uri(task.output, task.shard)
    storage.write_bytes(storage.join(shard_root, index_layout.INDEX_FILE), data)
    storage.write_bytes(storage.join(shard_root, index_layout.IDS_FILE), _ids_parquet(rows))
    # Filterable metadata beside the ids (docs/filters.md); before the manifest, the commit.
    storage.write_bytes(storage.join(shard_root, index_layout.METADATA_FILE),
                        metadata.metadata_parquet(
                            metadata.read_metadata(dataset, rows.ids, task.attribute_names)))
    shard_manifest = _shard_manifest(task, rows, data, tuned)
    write_manifest(storage.join(shard_root, INDEX_MANIFEST), shard_manifest)  # the commit
    log.info("shard %d: %d vectors, %s, recall@10=%s", task.shard, len(rows),
             tuned.search_params, tuned.recall_at_10)
    return shard_manifest


def run_task(task: ShardTask, trained: bytes) -> ShardOutcome:
    """The unit of work for every engine: never raises a CbirError, returns it."""
    if task.endpoint_url and not storage.endpoint_url():
        os.environ["AWS_ENDPOINT_URL"] = task.endpoint_url
    if task.faiss_threads > 0:
        faiss.omp_set_num_threads(task.faiss_threads)
    try:
        return ShardOutcome(task.shard, manifest=build_shard(task, trained))
    except errors.CbirError as exc:
        return ShardOutcome(task.shard, error=(type(exc).__name__, str(exc)))


def plan(config: BuildConfig) -> tuple[list[ShardTask], bytes, EmbedManifest]:
    """Driver side: manifest, factory choice, version, training; the per-shard tasks."""
    if config.num_shards <= 0:
        raise errors.InvalidArgument(f"--shards must be positive, got {config.num_shards}")
    embed = reader.read_embed_manifest(config.embeddings)
    dataset = reader.open_dataset(config.embeddings, embed.dim)
    count = dataset.count_rows()
    user_factory = config.factory or select.choose_index(
        count, embed.dim, config.num_shards, config.memory_budget_bytes).factory
    factory = select.faiss_factory(user_factory)
    settings = {"train_size": config.train_size, "seed": config.seed,
                "target_recall": config.target_recall, "tune_queries": config.tune_queries}
    version = manifests.index_version(embed, factory, config.num_shards, settings)
    log.info("index %s: %d rows, dim %d, %s over %d shards", version, count, embed.dim,
             factory, config.num_shards)
    trained = load_or_train(config, version, dataset, embed.dim, factory, count)
    base = ShardTask(0, config.num_shards, config.embeddings, config.output, embed.dim, factory,
                     version, embed.model, embed.model_version, config.target_recall,
                     config.tune_queries, config.seed, config.faiss_threads,
                     storage.endpoint_url(), metadata.attribute_names(dataset))
    shards = range(config.num_shards) if config.shard_only is None else [config.shard_only]
    return [replace(base, shard=s) for s in shards], trained, embed


def trained_uri(output: str, version: str) -> str:
    return storage.join(output, "_trained", f"{version}.faiss")


def load_or_train(config: BuildConfig, version: str, dataset: reader.ds.Dataset, dim: int,
                  factory: str, count: int) -> bytes:
    """The trained empty index is stored beside the shards, so separate processes (one pod per
    shard) share one quantizer and a re-run does not train again."""
    uri = trained_uri(config.output, version)
    if storage.exists(uri):
        log.info("reusing trained index %s", uri)
        return storage.read_bytes(uri)
    trained = train(dataset, dim, factory, count, config)
    storage.write_bytes(uri, trained)
    return trained


def committed_shards(output: str, num_shards: int, version: str,
                     known: dict[int, ShardManifest]) -> list[ShardManifest]:
    """The shard manifests of ``version`` that exist so far; ``known`` (what this process's
    tasks just committed) is not read back from storage."""
    found = [known[s] if s in known else committed_shard(output, s, version)
             for s in range(num_shards)]
    return [done for done in found if done is not None]


def _check_shard_only(config: BuildConfig) -> None:
    if config.shard_only is not None and not 0 <= config.shard_only < config.num_shards:
        raise errors.InvalidArgument(
            f"--shard-only must be in [0, {config.num_shards}), got {config.shard_only}"
        )


def build_index(config: BuildConfig) -> IndexManifest | None:
    """Build the shards; write the top-level manifest (last) once every shard is committed.

    With ``shard_only`` the one shard is built and the manifest written only by the process
    that finds every shard done (idempotent: any of them may write the same bytes); None is
    returned while other shards are still missing."""
    _check_shard_only(config)
    tasks, trained, embed = plan(config)
    if config.engine == "spark":
        from jobs.build_index.spark_engine import run_spark

        outcomes = run_spark(tasks, trained, config.master)
    elif config.engine == "sequential":
        from jobs.build_index.sequential import run_sequential

        outcomes = run_sequential(tasks, trained)
    else:
        raise errors.InvalidArgument(f"unknown engine {config.engine!r}")
    built = {outcome.shard: outcome.unwrap() for outcome in outcomes}  # re-raises task errors
    shard_manifests = committed_shards(config.output, config.num_shards, tasks[0].index_version,
                                       built)
    if len(shard_manifests) < config.num_shards:
        log.info("%d/%d shards committed; the last one writes the index manifest",
                 len(shard_manifests), config.num_shards)
        return None
    top = manifests.index_manifest(shard_manifests, config.embeddings, embed)
    write_manifest(index_layout.index_manifest_uri(config.output), top)  # written last
    return top
