"""The index build: train once on a sample, then one index per shard from the trained one.

``build_index`` (driver) checks what it can up front, reads the embeddings manifest, picks the
factory, trains the empty index and serialises it, then has ``jobs.engines`` run
``build_shard`` once per shard - sequentially or as Spark tasks (same function, same inputs: a
small ``ShardTask`` descriptor plus the trained index bytes, shared once per executor).
Each task writes ``shard=NNN/{index.faiss, ids.parquet, metadata.parquet, manifest.json}``
(manifest last); the driver writes the top-level ``manifest.json`` after every shard committed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import errors, index_layout, storage
from cbir.options import nested, option
from cbir.schema import (
    INDEX_MANIFEST,
    EmbedManifest,
    IndexManifest,
    ShardManifest,
    read_manifest,
    write_manifest,
)
from jobs import engines
from jobs.build_index import embeddings_run, metadata, select, train_device, tune
from jobs.build_index import manifest as manifests
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

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * select.GIB)


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
    attribute_names: tuple[str, ...] = ()  # of the whole run: the same columns on every shard


def _empty_index(dim: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise errors.InvalidArgument(f"bad index factory {factory!r}: {exc}") from exc


def train(dataset: embeddings_run.ds.Dataset, dim: int, factory: str, count: int,
          config: BuildConfig) -> bytes:
    """The trained, empty index, serialised (the same bytes seed every shard)."""
    index = _empty_index(dim, factory)
    if not index.is_trained:
        sample = embeddings_run.read_sample(dataset, dim, config.train_size / max(count, 1))
        log.info("training %s on %d sampled vectors", factory, len(sample))
        try:
            train_device.train(index, sample, train_device.resolve(config.train_device))
        except RuntimeError as exc:
            raise errors.InvalidArgument(
                f"cannot train {factory!r} on {len(sample)} vectors: {exc}"
            ) from exc
    return bytes(faiss.serialize_index(index))


def _shard_manifest(task: ShardTask, rows: embeddings_run.Rows, data: bytes,
                    tuned: tune.TuneResult) -> ShardManifest:
    return ShardManifest(
        shard=task.shard, num_shards=task.num_shards, count=len(rows), dim=task.dim,
        metric="ip", factory=task.factory, search_params=tuned.search_params,
        model=task.model, model_version=task.model_version, index_version=task.index_version,
        checksum=index_layout.sha256_hex(data), recall_at_10=tuned.recall_at_10,
    )


def _ids_parquet(rows: embeddings_run.Rows) -> bytes:
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


def _tune(task: ShardTask, index: faiss.Index, rows: embeddings_run.Rows) -> tune.TuneResult:
    if select.is_exact(task.factory):
        return tune.TuneResult({}, 1.0, True)  # brute force: exact by construction
    rng = np.random.default_rng(task.seed + task.shard)
    query_rows = rng.choice(len(rows), size=min(task.tune_queries, len(rows)), replace=False)
    return tune.tune(index, rows.vectors, rows.ids, query_rows, task.target_recall)


def build_shard(task: ShardTask, trained: bytes) -> ShardManifest:
    """The work function every engine runs: one shard's index, committed by its manifest."""
    if task.faiss_threads > 0:
        faiss.omp_set_num_threads(task.faiss_threads)
    if (done := committed_shard(task.output, task.shard, task.index_version)) is not None:
        log.info("shard %d already built (%s), skipping", task.shard, task.index_version)
        return done
    dataset = embeddings_run.open_dataset(task.embeddings, task.dim)
    rows = embeddings_run.read_shard(dataset, task.dim, task.shard, task.num_shards)
    embeddings_run.check_vectors(rows, f"shard {task.shard}")
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


def plan(config: BuildConfig) -> tuple[list[ShardTask], bytes, EmbedManifest]:
    """Driver side: manifest, factory choice, version, training; the per-shard tasks."""
    embed = embeddings_run.read_embed_manifest(config.embeddings)
    if embed.num_images == 0:
        raise errors.FailedPrecondition(
            f"the embeddings run {config.embeddings} holds 0 images: nothing to index (did the "
            "backfill read the right bucket and prefix?)")
    dataset = embeddings_run.open_dataset(config.embeddings, embed.dim)
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
                     metadata.attribute_names(dataset))
    shards = range(config.num_shards) if config.shard_only is None else [config.shard_only]
    return [replace(base, shard=s) for s in shards], trained, embed


def trained_uri(output: str, version: str) -> str:
    return storage.join(output, "_trained", f"{version}.faiss")


def load_or_train(config: BuildConfig, version: str, dataset: embeddings_run.ds.Dataset, dim: int,
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
    storage.endpoint_url()  # a malformed AWS_ENDPOINT_URL
    engines.check(config.engine)
    storage.check_writable(config.output)


def build_index(config: BuildConfig, show_progress: bool = True) -> IndexManifest | None:
    """Build the shards; write the top-level manifest (last) once every shard is committed.

    With ``shard_only`` the one shard is built and the manifest written only by the process
    that finds every shard done (idempotent: any of them may write the same bytes); None is
    returned while other shards are still missing."""
    check(config)
    tasks, trained, embed = plan(config)
    with Progress(len(tasks), "shard", "build-index", enabled=show_progress) as progress:
        finished = engines.run(tasks, build_shard, config.engine, shared=trained,
                               progress=progress)  # task errors are re-raised here, typed
    built = {f.result.shard: f.result for f in finished}
    shard_manifests = committed_shards(config.output, config.num_shards, tasks[0].index_version,
                                       built)
    if len(shard_manifests) < config.num_shards:
        log.info("%d/%d shards committed; the last one writes the index manifest",
                 len(shard_manifests), config.num_shards)
        return None
    top = manifests.index_manifest(shard_manifests, config.embeddings, embed)
    write_manifest(index_layout.index_manifest_uri(config.output), top)  # written last
    return top
