"""The index build: train once on a sample, then one index per shard from the trained one.

``build_index`` (driver) checks what it can up front, reads the embeddings manifest, picks the
factory, trains the empty index on a bounded sample and serialises it, then has
``jobs.engines.run_partitioned`` read every embeddings part ONCE and route its rows to their shard
(``partition.route_part``: a Spark shuffle, or the sequential engine's per-shard spill files);
``reduce_shard`` builds each shard from only its rows (``shard.build_from_rows``: the same
function on every engine, sharing the trained index bytes once per executor). A shard that
misses the recall target fails the build (or, for an automatic choice, moves to the next
candidate). Each shard writes
``shard=NNN/{index.faiss, ids.parquet, metadata.parquet, manifest.json}`` (manifest last); the
driver writes the top-level ``manifest.json`` after every shard committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

import faiss

from cbir import errors, index_layout, storage
from cbir.options import nested, option
from cbir.schema import (
    EmbedManifest,
    IndexManifest,
    ShardManifest,
    write_manifest,
)
from jobs import engines
from jobs.build_index import embeddings_run, metadata, partition, select, train_device
from jobs.build_index import manifest as manifests
from jobs.build_index.shard import (
    RecallNotReached,
    ShardTask,
    build_from_rows,
    committed_shard,
)
from jobs.engines import EngineOptions
from jobs.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """The build's options, declared once: ``cbir build-index``'s flags are generated from these
    fields (``cbir.options``), so the CLI and Python callers share every default."""

    embeddings: str = option(required=True, help="embeddings run (path or s3://)")
    output: str = option(required=True, help="index root to write (path or s3://)")
    num_shards: int = option(flag="--shards", positive=True, required=True, env="CBIR_SHARDS",
                             help="number of shards N")
    factory: str | None = option(  # None: choose automatically (select.choose_index)
        None, flag="--index", metavar="FACTORY", help="Faiss factory (Flat, HNSW32, "
        "IVF4096,SQ8, OPQ32,IVF4096,PQ32...); default: chosen from size, dim and "
        "--memory-budget-gb")
    engine: EngineOptions = nested(EngineOptions)  # sequential unless told; master, --conf
    memory_budget_gb: float = option(8.0, positive=True, help="RAM one shard server may spend "
                                     "on its index (automatic selection)")
    target_recall: float = option(0.95, positive=True,
                                  help="recall@10 the tuned nprobe/efSearch must reach")
    # vectors sampled for training (IVF centroids, PQ codebooks)
    train_size: int = option(200_000, positive=True, help="vectors sampled to train IVF/PQ")
    tune_queries: int = option(500, positive=True, help="queries to tune search params on")
    seed: int = 1234
    faiss_threads: int = option(0, non_negative=True,
                                help="OpenMP threads per shard task (0 = all cores)")
    train_device: str = option("auto", choices=("auto", "cpu", "cuda"),
                               help="where IVF k-means trains: auto (the GPU when faiss-gpu "
                               "sees one, else CPU) | cpu | cuda")
    # Build only this shard (one pod of a Kubernetes Indexed Job); None = every shard.
    shard_only: int | None = option(
        None, non_negative=True, metavar="K", help="build shard K only (one pod per shard, "
        "e.g. a Kubernetes Indexed Job); the process that completes the set writes the manifest")

    # Per shard, the log position the embeddings already hold (set by ``cbir compact``, which
    # folds the write-ahead log in); written into each shard manifest as ``wal_seq``.
    wal_seqs: tuple[int, ...] = ()

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * select.GIB)


def empty_index(dim: int, factory: str) -> faiss.Index:
    """The untrained index of ``factory`` (inner product), as every build trains it."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise errors.InvalidArgument(f"bad index factory {factory!r}: {exc}") from exc
    _no_polysemous_training(index)
    return index


def _no_polysemous_training(index: faiss.Index) -> None:
    """Faiss's factory turns on polysemous training for PQ codes (it reorders each codebook so
    Hamming distances between codes track real ones). Only polysemous search (``polysemous_ht``)
    uses that, and cbir never does: the asymmetric distances a search computes are the same
    without it, while it made training minutes long (IVF64,PQ16 on 5k x 64-d, one core: 249 s
    with, 14 s without; docs/build_index.md). Same as the factory suffix ``np``."""
    ivf = faiss.try_extract_index_ivf(index)
    target = faiss.downcast_index(ivf if ivf is not None else index)
    if hasattr(target, "do_polysemous_training"):
        target.do_polysemous_training = False


def train(dataset: embeddings_run.ds.Dataset, dim: int, factory: str,
          config: BuildConfig) -> bytes:
    """The trained, empty index, serialised (the same bytes seed every shard)."""
    index = empty_index(dim, factory)
    if not index.is_trained:
        sample = embeddings_run.read_sample(dataset, dim, config.train_size, config.seed)
        log.info("training %s on %d sampled vectors", factory, len(sample))
        try:
            train_device.train(index, sample, train_device.resolve(config.train_device))
        except RuntimeError as exc:
            raise errors.InvalidArgument(
                f"cannot train {factory!r} on {len(sample)} vectors: {exc}"
            ) from exc
    return bytes(faiss.serialize_index(index))


@dataclass(frozen=True)
class ShardJob:
    """What every shard's reduce task shares (a broadcast on Spark): its task template and
    the trained, empty index."""

    base: ShardTask
    trained: bytes


def reduce_shard(shard: int, payloads: Iterable[partition.Payload], job: ShardJob) -> ShardManifest:
    """The reduce side of the partition step: one shard from the rows routed to it."""
    return build_from_rows(replace(job.base, shard=shard), job.trained, payloads)


def build_shard(task: ShardTask, trained: bytes) -> ShardManifest:
    """One shard on its own (a task of ``engines.run``): route every part in this process,
    keeping only this shard's rows. A whole build partitions instead (``build_index``)."""
    dataset = embeddings_run.open_dataset(task.embeddings, task.dim)
    parts = partition.part_tasks(dataset, task.embeddings, task.num_shards)
    rows = (payload for part in parts for shard, payload in partition.route_part(part)
            if shard == task.shard)
    return build_from_rows(task, trained, rows)


@dataclass(frozen=True)
class Plan:
    tasks: list[ShardTask]  # the shards this process builds
    trained: bytes
    embed: EmbedManifest
    parts: list[partition.PartTask]
    candidates: tuple[str, ...]  # the automatic choice's fallbacks, best first; () if given


def _factories(config: BuildConfig, count: int, dim: int) -> list[str]:
    if config.factory:
        return [config.factory]
    return [c.factory for c in select.candidates(count, dim, config.num_shards,
                                                 config.memory_budget_bytes)]


def plan(config: BuildConfig, skip: int = 0) -> Plan:
    """Driver side: manifest, factory choice (the ``skip``-th automatic candidate), version,
    training; the per-shard tasks and the parts to route."""
    embed = embeddings_run.read_embed_manifest(config.embeddings)
    if embed.num_images == 0:
        raise errors.FailedPrecondition(
            f"the embeddings run {config.embeddings} holds 0 images: nothing to index (did the "
            "backfill read the right bucket and prefix?)")
    dataset = embeddings_run.open_dataset(config.embeddings, embed.dim)
    count = dataset.count_rows()
    factories = _factories(config, count, embed.dim)[skip:]
    factory = select.faiss_factory(factories[0])
    settings = {"train_size": config.train_size, "seed": config.seed,
                "target_recall": config.target_recall, "tune_queries": config.tune_queries}
    version = manifests.index_version(embed, factory, config.num_shards, settings)
    log.info("index %s: %d rows, dim %d, %s over %d shards", version, count, embed.dim,
             factory, config.num_shards)
    trained = load_or_train(config, version, dataset, embed.dim, factory)
    base = ShardTask(0, config.num_shards, config.embeddings, config.output, embed.dim, factory,
                     version, embed.model, embed.model_version, config.target_recall,
                     config.tune_queries, config.seed, config.faiss_threads,
                     metadata.attribute_names(dataset), config.wal_seqs,
                     metadata_schema=metadata.schema_bytes(dataset.schema))
    shards = range(config.num_shards) if config.shard_only is None else [config.shard_only]
    parts = partition.part_tasks(dataset, config.embeddings, config.num_shards)
    return Plan([replace(base, shard=s) for s in shards], trained, embed, parts,
                tuple(factories[1:]) if config.factory is None else ())


def trained_uri(output: str, version: str) -> str:
    return storage.join(output, "_trained", f"{version}.faiss")


def load_or_train(config: BuildConfig, version: str, dataset: embeddings_run.ds.Dataset,
                  dim: int, factory: str) -> bytes:
    """The trained empty index is stored beside the shards, so separate processes (one pod per
    shard) share one quantizer and a re-run does not train again."""
    uri = trained_uri(config.output, version)
    if storage.exists(uri):
        log.info("reusing trained index %s", uri)
        return storage.read_bytes(uri)
    trained = train(dataset, dim, factory, config)
    storage.write_bytes(uri, trained)
    return trained


def committed_shards(output: str, num_shards: int, version: str,
                     known: dict[int, ShardManifest]) -> list[ShardManifest]:
    """The shard manifests of ``version`` that exist so far; ``known`` (what this process's
    tasks just committed) is not read back from storage."""
    found = [known[s] if s in known else committed_shard(output, s, version)
             for s in range(num_shards)]
    return [done for done in found if done is not None]


def check(config: BuildConfig) -> None:
    """The cheap checks, before reading embeddings, training or starting Spark."""
    if config.num_shards <= 0:
        raise errors.InvalidArgument(f"--shards must be positive, got {config.num_shards}")
    if not 0 < config.target_recall <= 1:
        raise errors.InvalidArgument(f"--target-recall must be in (0, 1], got "
                                     f"{config.target_recall}")
    if config.shard_only is not None and not 0 <= config.shard_only < config.num_shards:
        raise errors.InvalidArgument(
            f"--shard-only must be in [0, {config.num_shards}), got {config.shard_only}"
        )
    if config.wal_seqs and len(config.wal_seqs) != config.num_shards:
        raise errors.InvalidArgument(f"{len(config.wal_seqs)} log positions for "
                                     f"{config.num_shards} shards")
    storage.endpoint_url()  # a malformed AWS_ENDPOINT_URL
    engines.check(config.engine)
    storage.check_writable(config.output)


def _build_shards(config: BuildConfig, planned: Plan,
                  show_progress: bool) -> dict[int, ShardManifest]:
    """One pass over the parts routes every row to its shard's task (engines.run_partitioned);
    shards already committed at this version are not routed to again."""
    version = planned.tasks[0].index_version
    todo = [t.shard for t in planned.tasks
            if committed_shard(config.output, t.shard, version) is None]
    job = ShardJob(replace(planned.tasks[0], shard=0), planned.trained)
    with Progress(len(todo), "shard", "build-index", enabled=show_progress) as progress:
        finished = engines.run_partitioned(
            planned.parts, partition.route_part, reduce_shard, config.num_shards,
            config.engine, shared=job, keys=todo, progress=progress)  # typed errors re-raised
    return {f.result.shard: f.result for f in finished}


def _build_meeting_recall(config: BuildConfig,
                          show_progress: bool) -> tuple[Plan, dict[int, ShardManifest]]:
    """Build; when the factory was chosen automatically and a shard misses the recall target,
    move to the next candidate that fits the memory budget instead of shipping the miss."""
    skip = 0
    while True:
        planned = plan(config, skip)
        try:
            return planned, _build_shards(config, planned, show_progress)
        except RecallNotReached as exc:
            if not planned.candidates:
                raise
            log.warning("%s; trying %s", exc, planned.candidates[0])
            skip += 1


def build_index(config: BuildConfig, show_progress: bool = True) -> IndexManifest | None:
    """Build the shards; write the top-level manifest (last) once every shard is committed.

    With ``shard_only`` the one shard is built and the manifest written only by the process
    that finds every shard done (idempotent: any of them may write the same bytes); None is
    returned while other shards are still missing."""
    check(config)
    planned, built = _build_meeting_recall(config, show_progress)
    version = planned.tasks[0].index_version
    shard_manifests = committed_shards(config.output, config.num_shards, version, built)
    if len(shard_manifests) < config.num_shards:
        log.info("%d/%d shards committed; the last one writes the index manifest",
                 len(shard_manifests), config.num_shards)
        return None
    top = manifests.index_manifest(shard_manifests, config.embeddings, planned.embed)
    write_manifest(index_layout.index_manifest_uri(config.output), top)  # written last
    return top
