"""Query images -> embeddings, with the very model and preprocessing the backfill used.

``QueryEmbedder`` is a protocol so tests can inject a fake; ``load_query_embedder`` adapts
``cbir.embedding`` (imported lazily: a coordinator started with ``--no-image-queries`` never
imports torch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from cbir.batching import BatcherLimits, MicroBatcher
from cbir.errors import BadImage, InvalidArgument, ResourceExhausted
from cbir.limits import Limits

log = logging.getLogger(__name__)


class QueryEmbedder(Protocol):
    name: str
    dim: int
    version: str

    def embed_batch(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        """Encoded images -> per image a (dim,) float32 L2-normalised vector or the BadImage
        that says why it has none. Called from one thread at a time."""
        ...


class CbirQueryEmbedder:
    """Adapter over ``cbir.embedding.Embedder`` (``embed_bytes`` reports, never raises)."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.name = str(embedder.name)
        self.dim = int(embedder.dim)
        self.version = str(embedder.version)

    def embed_batch(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        # for_query: the query pixel cap (Limits.max_query_image_pixels), checked from the
        # header before a pixel is decoded.
        result = self._embedder.embed_bytes(list(images), for_query=True)
        out: list[np.ndarray | BadImage] = [
            BadImage("no_embedding", "the embedder returned nothing") for _ in images
        ]
        for index, reason, detail in result.failures:
            out[index] = BadImage(str(reason), str(detail))
        vectors = np.asarray(result.vectors, dtype=np.float32)
        for row, index in enumerate(result.ok):
            out[index] = vectors[row]
        return out


def load_query_embedder(
    name: str, weights: str | None, device: str | None, runtime: str = "auto"
) -> QueryEmbedder:
    from cbir.embedding import load_embedder  # torch lives behind this import

    return CbirQueryEmbedder(load_embedder(name, weights, device, runtime))


def check_image_bytes(image: bytes, limits: Limits) -> None:
    if not image:
        raise InvalidArgument("empty image: the request's image field has no bytes")
    if len(image) > limits.max_image_bytes:
        raise ResourceExhausted(
            f"image of {len(image)} bytes exceeds the limit of {limits.max_image_bytes} bytes"
        )


class EmbeddingRunner:
    """Embeds off the event loop in one worker thread (the model must be called from one
    thread at a time), batching the queries that queue up meanwhile into one forward pass.
    The queue is bounded: each waiting query holds its image bytes, so a burst beyond
    ``max_queued`` is refused with RESOURCE_EXHAUSTED instead of growing memory.

    An item is a tuple of images weighing its length: a SearchBatch's images are one item, so
    they are embedded in one forward pass (together with whatever else queued) and count once
    against ``max_queued`` (their number is bounded by ``Limits.max_batch_images``)."""

    def __init__(self, embedder: QueryEmbedder, max_batch: int = 16, max_queued: int = 32
                 ) -> None:
        self.embedder = embedder
        self.batcher: MicroBatcher[tuple[bytes, ...], list[np.ndarray | BadImage]] = (
            MicroBatcher(self._embed_batch,
                         BatcherLimits(max_batch=max_batch, max_queued=max_queued),
                         name="the query embedder", weight=len))

    async def embed(self, image: bytes) -> np.ndarray:
        (vector,) = await self.batcher.run((image,))
        if isinstance(vector, BadImage):
            raise vector
        return vector

    async def embed_many(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        """Per image its vector or the BadImage saying why it has none (never raised here)."""
        return await self.batcher.run(tuple(images))

    async def _embed_batch(self, items: list[tuple[bytes, ...]]
                           ) -> list[list[np.ndarray | BadImage]]:
        images = [image for item in items for image in item]
        try:
            flat = await asyncio.to_thread(self.embedder.embed_batch, images)
        except Exception:
            log.exception("query embedding failed")
            raise
        out, start = [], 0
        for item in items:
            out.append(list(flat[start:start + len(item)]))
            start += len(item)
        return out

    async def close(self) -> None:
        await self.batcher.close()
