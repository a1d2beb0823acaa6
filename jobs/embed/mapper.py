"""Fetch + decode + embed one task's objects.

I/O and decoding run on a thread pool (boto3 and PIL release the GIL) one batch ahead of the
model, so the network, the JPEG decoder and the CNN overlap. The embedder is built once per
worker process and reused by every task that process runs.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cbir.embedding import Embedder, load_embedder, set_torch_threads
from cbir.embedding.preprocess import Prepared, check_size
from cbir.errors import BadImage, ModelMismatch
from cbir.limits import Limits
from jobs.embed import reader
from jobs.embed.config import BackfillConfig, EmbedTask, ObjectRef
from jobs.embed.writer import ErrorRows, PartRows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ref: ObjectRef
    result: Prepared | BadImage
    nbytes: int | None
    retries: int = 0
    meta: reader.ObjectMeta | None = None


@dataclass
class MapStats:
    bytes_read: int = 0
    fetch_retries: int = 0


@lru_cache(maxsize=2)
def embedder_for(
    model: str, weights: str | None, device: str | None, version: str, threads: int | None
) -> Embedder:
    """The worker's embedder; refuses to run if it is not the model the driver planned for
    (e.g. different weights on this machine)."""
    set_torch_threads(threads)
    emb = load_embedder(model, weights, device)
    if emb.version != version:
        raise ModelMismatch(
            f"worker loaded {model} version {emb.version}, driver expects {version}"
        )
    return emb


def _fetch_prepare(emb: Embedder, bucket: str, ref: ObjectRef, limits: Limits,
                   with_tags: bool = False) -> Outcome:
    try:
        check_size(ref.size, limits)  # the listing's size: no GET for an empty/oversized object
    except BadImage as exc:
        return Outcome(ref, exc, ref.size)
    try:
        data, retries, meta = reader.fetch_with_meta(bucket, ref.key)
        if with_tags:
            meta.attributes.update(reader.fetch_tags(bucket, ref.key))
    except reader.MissingObject:
        return Outcome(ref, BadImage("missing", "deleted after listing"), None)
    except reader.ObjectUnreadable as exc:  # permanent refusal: record, don't fail the task
        return Outcome(ref, BadImage(exc.reason, exc.detail), None)
    return Outcome(ref, emb.try_prepare(data), len(data), retries, meta)


def _collect(
    task: EmbedTask, outcomes: list[Outcome], emb: Embedder,
    rows: PartRows, errors: ErrorRows, stats: MapStats,
) -> None:
    good: list[np.ndarray] = []
    for out in outcomes:
        uri = task.uri(out.ref)
        stats.bytes_read += out.nbytes or 0
        stats.fetch_retries += out.retries
        if isinstance(out.result, BadImage):
            errors.add(uri, out.result.reason, out.result.detail, out.nbytes)
            continue
        rows.keys.append(uri)
        rows.sizes.append(out.result.size)
        rows.nbytes.append(out.nbytes or 0)
        rows.add_meta(out.meta)
        good.append(out.result.pixels)
    if good:
        rows.vectors.append(emb.embed_pixels(np.stack(good)))


def embed_task(config: BackfillConfig, task: EmbedTask) -> tuple[PartRows, ErrorRows, MapStats]:
    emb = embedder_for(config.model, config.weights, config.device, config.model_version,
                       config.torch_threads)
    batch = config.batch_size or emb.batch_size
    chunks = [task.objects[i : i + batch] for i in range(0, len(task.objects), batch)]
    rows, errors, stats = PartRows(), ErrorRows(), MapStats()
    with ThreadPoolExecutor(max(1, config.io_threads)) as pool:

        def submit(chunk: tuple[ObjectRef, ...]) -> list[Future[Outcome]]:
            return [pool.submit(_fetch_prepare, emb, task.bucket, r, config.limits,
                                config.with_tags) for r in chunk]

        pending = submit(chunks[0]) if chunks else []
        for i in range(len(chunks)):
            # Queue the next batch's fetch+decode before running the model on this one.
            ahead = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            _collect(task, [f.result() for f in pending], emb, rows, errors, stats)
            pending = ahead
    return rows, errors, stats
