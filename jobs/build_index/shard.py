"""One shard's build, the reduce side of the partition step: spill the shard's routed rows to
local disk, then add them to the trained index chunk by chunk, tune, commit.

Peak memory is the index being built plus one chunk (``shard_spill.CHUNK_BYTES`` of vectors)
plus 9 bytes per row (the ids and the kept mask): de-duplication holds the ids and one sort
order, fetching keys only for repeated ids; tuning's exact ground truth streams the spill
against a bounded query sample; the index is written to a file and dropped before the sorted
``ids.parquet`` / ``metadata.parquet`` are written one id-range bucket at a time. The measured
model per factory is in docs/build_index.md.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import errors, index_layout, storage
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest, write_manifest
from jobs.build_index import adding, embeddings_run, metadata, select, task_memory, tune
from jobs.build_index.shard_spill import Payload, ShardSpill

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
    """The shard's kept rows: a mask over the spill's rows and their ids (9 bytes a row)."""

    mask: np.ndarray
    ids: np.ndarray


def committed_shard(output: str, shard: int, version: str) -> ShardManifest | None:
    """The shard's manifest if ``version`` of it is committed (a re-run does not rebuild it)."""
    uri = index_layout.shard_file(output, shard, INDEX_MANIFEST)
    if not storage.exists(uri):
        return None
    done = read_manifest(uri, ShardManifest)
    return done if done.index_version == version else None


def _kept(spill: ShardSpill) -> Kept:
    ids = spill.ids()
    mask = embeddings_run.first_occurrences(ids, spill.keys_at)
    return Kept(mask, ids[mask])


def _add(task: ShardTask, index: faiss.Index, spill: ShardSpill,
         kept: Kept) -> tuple[np.ndarray, np.ndarray]:
    """Add the kept rows chunk by chunk; return the tuning queries (vectors, ids) met on the
    way: a seeded sample of at most ``tune_queries`` rows."""
    rng = np.random.default_rng(task.seed + task.shard)
    size = 0 if select.is_exact(task.factory) else min(task.tune_queries, len(kept.ids))
    wanted = np.sort(rng.choice(kept.ids, size=size, replace=False))
    queries: list[np.ndarray] = [np.empty((0, task.dim), np.float32)]
    query_ids: list[np.ndarray] = [np.empty(0, np.int64)]
    passes = 0

    def checked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal passes
        passes += 1
        for ids, vectors in spill.chunks(kept.mask, task.dim):
            if passes == 1:  # the first pass over the vectors checks them; later ones re-read
                embeddings_run.check_vectors(ids, vectors, f"shard {task.shard}")
            yield ids, vectors

    for ids, vectors in adding.add_in_chunks(index, checked):
        hit = np.isin(ids, wanted, assume_unique=True)
        if hit.any():
            queries.append(vectors[hit])
            query_ids.append(ids[hit])
    return np.ascontiguousarray(np.concatenate(queries)), np.concatenate(query_ids)


def _tune(task: ShardTask, index: faiss.Index, spill: ShardSpill, kept: Kept,
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


def _write_sorted_tables(task: ShardTask, spill: ShardSpill, kept: Kept,
                         tmp: Path) -> tuple[Path, Path]:
    """``ids.parquet`` and ``metadata.parquet`` (docs/filters.md), sorted by image_id, written
    to local files one id-range bucket (a row group) at a time."""
    ids_path, meta_path = tmp / index_layout.IDS_FILE, tmp / index_layout.METADATA_FILE
    with ExitStack() as stack:
        # Keys and ids are unique: a dictionary would only cost memory.
        ids_writer = stack.enter_context(pq.ParquetWriter(
            str(ids_path), index_layout.IDS_SCHEMA, compression="zstd", use_dictionary=False))
        meta_writer: pq.ParquetWriter | None = None
        for rows in spill.sorted_rows(kept.mask, kept.ids):
            ids_writer.write_table(pa.table(
                [rows.column("image_id"), rows.column("key")], schema=index_layout.IDS_SCHEMA))
            meta = _metadata(task, rows)
            if meta_writer is None:
                meta_writer = stack.enter_context(
                    pq.ParquetWriter(str(meta_path), meta.schema, compression="zstd"))
            meta_writer.write_table(meta)
        if meta_writer is None:  # an empty shard still holds every column of the run
            pq.write_table(_metadata(task, metadata.empty_rows(task.metadata_schema)),
                           str(meta_path), compression="zstd")
    return ids_path, meta_path


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


def _commit(task: ShardTask, index_file: tuple[Path, str], count: int,
            tables: tuple[Path, Path], tuned: tune.TuneResult) -> ShardManifest:
    path, checksum = index_file
    shard_root = index_layout.shard_uri(task.output, task.shard)
    # Every file before the manifest, the commit.
    for local in (path, *tables):
        storage.write_file(storage.join(shard_root, local.name), str(local))
    manifest = ShardManifest(
        shard=task.shard, num_shards=task.num_shards, count=count, dim=task.dim,
        metric="ip", factory=task.factory, search_params=tuned.search_params,
        model=task.model, model_version=task.model_version, index_version=task.index_version,
        checksum=checksum, recall_at_10=tuned.recall_at_10,
        wal_seq=task.wal_seqs[task.shard] if task.wal_seqs else 0,
    )
    write_manifest(storage.join(shard_root, INDEX_MANIFEST), manifest)  # the commit
    return manifest


def _metadata(task: ShardTask, rows: pa.Table) -> pa.Table:
    columns = [c for c in rows.column_names if c not in metadata.NOT_METADATA]
    return metadata.from_rows(rows.select(columns), task.attribute_names)


def build_from_rows(task: ShardTask, trained: bytes,
                    payloads: Iterable[Payload]) -> ShardManifest:
    """The shard's index from its routed rows (any order), committed by its manifest."""
    if task.faiss_threads > 0:
        faiss.omp_set_num_threads(task.faiss_threads)
    if (done := committed_shard(task.output, task.shard, task.index_version)) is not None:
        log.info("shard %d already built (%s), skipping", task.shard, task.index_version)
        return done
    with task_memory.bounded(), \
            tempfile.TemporaryDirectory(prefix=f"cbir-shard{task.shard}-") as tmp:
        spill = ShardSpill.collect(payloads, Path(tmp))
        kept = _kept(spill)
        task_memory.trim()  # the sort order de-duplication used
        index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        queries, query_ids = _add(task, index, spill, kept)
        tuned = _tune(task, index, spill, kept, queries, query_ids)
        index_file = _write_index_file(index, Path(tmp))
        del index  # from here on the index is its file: the tables below do not stack on it
        task_memory.trim()
        tables = _write_sorted_tables(task, spill, kept, Path(tmp))
        manifest = _commit(task, index_file, len(kept.ids), tables, tuned)
    log.info("shard %d: %d vectors, %s, recall@10=%s", task.shard, len(kept.ids),
             tuned.search_params, tuned.recall_at_10)
    return manifest
