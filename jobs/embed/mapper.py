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
from jobs.embed import fetch
from jobs.embed.config import BackfillConfig, EmbedTask, ObjectRef
from jobs.embed.gpu import task_device
from jobs.embed.writer import ErrorRows, PartRows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ref: ObjectRef
    result: Prepared | BadImage | bytes  # bytes: left for the GPU to decode
    nbytes: int | None
    retries: int = 0
    meta: fetch.ObjectMeta | None = None


@dataclass
class MapStats:
    bytes_read: int = 0
    fetch_retries: int = 0


@lru_cache(maxsize=2)
def embedder_for(
    model: str, weights: str | None, device: str | None, version: str, threads: int | None,
    runtime: str = "auto",
) -> Embedder:
    """The worker's embedder; refuses to run if it is not the model the driver planned for
    (e.g. different weights on this machine)."""
    set_torch_threads(threads)
    emb = load_embedder(model, weights, device, runtime)
    if emb.version != version:
        raise ModelMismatch(
            f"worker loaded {model} version {emb.version}, driver expects {version}"
        )
    return emb


def _fetch_prepare(emb: Embedder, bucket: str, ref: ObjectRef, limits: Limits,
                   with_tags: bool = False) -> Outcome:
    try:
        check_size(ref.size, limits)  # the listing's size: no GET for an empty/oversized object
        data, retries, meta = fetch.fetch_with_meta(bucket, ref.key, limits.max_image_bytes,
                                                    ref.size)
        if with_tags:
            meta.attributes.update(fetch.fetch_tags(bucket, ref.key))
    except BadImage as exc:  # bad bytes or a permanent per-object refusal: recorded, not fatal
        return Outcome(ref, exc, None if exc.reason in ("missing", "access_denied",
                                                        "unreadable") else ref.size)
    if emb.decodes_on_device:  # CUDA: nvJPEG decodes the batch in _collect
        return Outcome(ref, data, len(data), retries, meta)
    return Outcome(ref, emb.try_prepare(data), len(data), retries, meta)


def _collect(
    task: EmbedTask, outcomes: list[Outcome], emb: Embedder,
    rows: PartRows, errors: ErrorRows, stats: MapStats,
) -> None:
    good: list[np.ndarray] = []
    raw: list[Outcome] = []
    for out in outcomes:
        uri = task.uri(out.ref)
        stats.bytes_read += out.nbytes or 0
        stats.fetch_retries += out.retries
        if isinstance(out.result, BadImage):
            errors.add(uri, out.result.reason, out.result.detail, out.nbytes)
            continue
        if isinstance(out.result, bytes):
            raw.append(out)
            continue
        rows.keys.append(uri)
        rows.sizes.append(out.result.size)
        rows.nbytes.append(out.nbytes or 0)
        rows.add_meta(out.meta)
        good.append(out.result.pixels)
    if good:
        rows.vectors.append(emb.embed_pixels(np.stack(good)))
    if raw:
        _collect_on_device(task, raw, emb, rows, errors)


def _collect_on_device(task: EmbedTask, raw: list[Outcome], emb: Embedder, rows: PartRows,
                       errors: ErrorRows) -> None:
    """Bytes decoded and embedded on the GPU in one batch; failures recorded like the rest."""
    res = emb.embed_bytes([out.result for out in raw if isinstance(out.result, bytes)])
    for index, reason, detail in res.failures:
        errors.add(task.uri(raw[index].ref), reason, detail, raw[index].nbytes)
    for index, size in zip(res.ok, res.sizes, strict=True):
        rows.keys.append(task.uri(raw[index].ref))
        rows.sizes.append(size)
        rows.nbytes.append(raw[index].nbytes or 0)
        rows.add_meta(raw[index].meta)
    if res.ok:
        rows.vectors.append(res.vectors)


def embed_task(config: BackfillConfig, task: EmbedTask) -> tuple[PartRows, ErrorRows, MapStats]:
    emb = embedder_for(config.model, config.weights, task_device(config.device),
                       config.model_version, config.torch_threads, config.runtime)
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
