"""One shard's build, the reduce side of the partition step: spill the shard's routed rows to
local disk, then add them to the trained index chunk by chunk, tune, commit.

Peak memory is the index being built plus one chunk, plus the shard's ids and keys (the id
table the server loads anyway): de-duplication and collision checks hold only ids and one sort
order, and tuning's exact ground truth streams the spill against a bounded query sample.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import errors, index_layout, storage
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest, write_manifest
from jobs.build_index import embeddings_run, metadata, partition, select, tune

log = logging.getLogger(__name__)


class RecallNotReached(errors.FailedPrecondition):
    """The tuned index misses the recall target: it is not shipped."""


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
    # Per shard, the write-ahead log position this build folds in (compaction); () = none.
    wal_seqs: tuple[int, ...] = ()
    # The run's metadata columns (``metadata.schema_bytes``): what an empty shard still holds.
    metadata_schema: bytes = b""


@dataclass(frozen=True)
class Kept:
    """The shard's kept rows: a mask over the spill's rows, their ids and keys."""

    mask: np.ndarray
    ids: np.ndarray
    keys: pa.Array


def committed_shard(output: str, shard: int, version: str) -> ShardManifest | None:
    """The shard's manifest if ``version`` of it is committed (a re-run does not rebuild it)."""
    uri = index_layout.shard_file(output, shard, INDEX_MANIFEST)
    if not storage.exists(uri):
        return None
    done = read_manifest(uri, ShardManifest)
    return done if done.index_version == version else None


def _kept(spill: partition.ShardSpill) -> Kept:
    ids, keys = spill.ids_and_keys()
    mask = embeddings_run.first_occurrences(ids, keys)
    return Kept(mask, ids[mask], keys.filter(pa.array(mask)).combine_chunks())


def _add(task: ShardTask, index: faiss.Index, spill: partition.ShardSpill,
         kept: Kept) -> tuple[np.ndarray, np.ndarray]:
    """Add the kept rows chunk by chunk; return the tuning queries (vectors, ids) met on the
    way: a seeded sample of at most ``tune_queries`` rows."""
    rng = np.random.default_rng(task.seed + task.shard)
    size = 0 if select.is_exact(task.factory) else min(task.tune_queries, len(kept.ids))
    wanted = np.sort(rng.choice(kept.ids, size=size, replace=False))
    queries: list[np.ndarray] = [np.empty((0, task.dim), np.float32)]
    query_ids: list[np.ndarray] = [np.empty(0, np.int64)]
    for ids, vectors in spill.chunks(kept.mask, task.dim):
        embeddings_run.check_vectors(ids, vectors, f"shard {task.shard}")
        index.add_with_ids(vectors, ids)
        hit = np.isin(ids, wanted, assume_unique=True)
        if hit.any():
            queries.append(vectors[hit])
            query_ids.append(ids[hit])
    return np.ascontiguousarray(np.concatenate(queries)), np.concatenate(query_ids)


def _tune(task: ShardTask, index: faiss.Index, spill: partition.ShardSpill, kept: Kept,
          queries: np.ndarray, query_ids: np.ndarray) -> tune.TuneResult:
    if select.is_exact(task.factory) or not len(queries):
        return tune.TuneResult({}, 1.0, True)  # brute force: exact by construction
    truth = tune.exact_topk(spill.chunks(kept.mask, task.dim), queries, tune.RECALL_K + 1)
    tuned = tune.tune(index, queries, query_ids, truth, task.target_recall)
    if not tuned.reached_target:
        raise RecallNotReached(
            f"shard {task.shard}: {task.factory} reaches recall@10 {tuned.recall_at_10:.3f} at "
            f"best ({tuned.search_params}) < target {task.target_recall}: not shipped; use a "
            "less compressed --index, a larger --memory-budget-gb or a lower --target-recall")
    return tuned


def _ids_parquet(kept: Kept) -> bytes:
    table = pa.table({"image_id": pa.array(kept.ids, pa.int64()), "key": kept.keys},
                     schema=index_layout.IDS_SCHEMA).sort_by("image_id")
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _write_index_file(index: faiss.Index, tmp: Path) -> tuple[Path, str]:
    """The index written to a local file by Faiss itself, and the file's sha256: no serialised
    copy of the index in memory (``serialize_index`` + ``bytes`` held two more copies)."""
    path = tmp / index_layout.INDEX_FILE
    faiss.write_index(index, str(path))
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return path, digest.hexdigest()


def _commit(task: ShardTask, index_file: tuple[Path, str], count: int, kept: Kept,
            tuned: tune.TuneResult, meta: pa.Table) -> ShardManifest:
    path, checksum = index_file
    shard_root = index_layout.shard_uri(task.output, task.shard)
    storage.write_file(storage.join(shard_root, index_layout.INDEX_FILE), str(path))
    storage.write_bytes(storage.join(shard_root, index_layout.IDS_FILE), _ids_parquet(kept))
    # Filterable metadata beside the ids, in the ids' (sorted) order (docs/filters.md); before
    # the manifest, the commit.
    storage.write_bytes(storage.join(shard_root, index_layout.METADATA_FILE),
                        metadata.metadata_parquet(meta))
    manifest = ShardManifest(
        shard=task.shard, num_shards=task.num_shards, count=count, dim=task.dim,
        metric="ip", factory=task.factory, search_params=tuned.search_params,
        model=task.model, model_version=task.model_version, index_version=task.index_version,
        checksum=checksum, recall_at_10=tuned.recall_at_10,
        wal_seq=task.wal_seqs[task.shard] if task.wal_seqs else 0,
    )
    write_manifest(storage.join(shard_root, INDEX_MANIFEST), manifest)  # the commit
    return manifest


def _metadata(task: ShardTask, spill: partition.ShardSpill, kept: Kept) -> pa.Table:
    columns = [c for c in spill.schema_names() if c not in metadata.NOT_METADATA]
    table = spill.columns_of_kept(kept.mask, columns)
    if table is None:
        table = metadata.empty_rows(task.metadata_schema)
    return metadata.from_rows(table, task.attribute_names)


def build_from_rows(task: ShardTask, trained: bytes,
                    payloads: Iterable[partition.Payload]) -> ShardManifest:
    """The shard's index from its routed rows (any order), committed by its manifest."""
    if task.faiss_threads > 0:
        faiss.omp_set_num_threads(task.faiss_threads)
    if (done := committed_shard(task.output, task.shard, task.index_version)) is not None:
        log.info("shard %d already built (%s), skipping", task.shard, task.index_version)
        return done
    with tempfile.TemporaryDirectory(prefix=f"cbir-shard{task.shard}-") as tmp:
        spill = partition.ShardSpill.collect(payloads, Path(tmp) / "rows.arrow")
        kept = _kept(spill)
        index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        queries, query_ids = _add(task, index, spill, kept)
        tuned = _tune(task, index, spill, kept, queries, query_ids)
        index_file = _write_index_file(index, Path(tmp))
        del index  # from here on the index is its file: the tables below do not stack on it
        meta = _metadata(task, spill, kept)
        manifest = _commit(task, index_file, len(kept.ids), kept, tuned, meta)
    log.info("shard %d: %d vectors, %s, recall@10=%s", task.shard, len(kept.ids),
             tuned.search_params, tuned.recall_at_10)
    return manifest
