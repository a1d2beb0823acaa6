"""Query images -> embeddings, with the very model and preprocessing the backfill used.

``QueryEmbedder`` is a protocol so tests can inject a fake; ``load_query_embedder`` adapts
``cbir.embedding`` (imported lazily: a coordinator started with ``--no-image-queries`` never
imports torch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import numpy as np

from cbir.errors import BadImage, InvalidArgument, ResourceExhausted
from cbir.limits import Limits

log = logging.getLogger(__name__)


class QueryEmbedder(Protocol):
    name: str
    dim: int
    version: str

    def embed(self, image: bytes) -> np.ndarray:
        """One encoded image -> a (dim,) float32 L2-normalised vector; raises BadImage."""
        ...


class CbirQueryEmbedder:
    """Adapter over ``cbir.embedding.Embedder`` (``embed_bytes`` reports, never raises)."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.name = str(embedder.name)
        self.dim = int(embedder.dim)
        self.version = str(embedder.version)

    def embed(self, image: bytes) -> np.ndarray:
        result = self._embedder.embed_bytes([image])
        if result.failures:
            _, reason, detail = result.failures[0]
            raise BadImage(str(reason), str(detail))
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if vectors.shape != (1, self.dim):
            raise BadImage("no_embedding", f"embedder returned shape {vectors.shape}")
        return vectors[0]


def load_query_embedder(name: str, weights: str | None, device: str | None) -> QueryEmbedder:
    from cbir.embedding import load_embedder  # torch lives behind this import

    return CbirQueryEmbedder(load_embedder(name, weights, device))


def check_image_bytes(image: bytes, limits: Limits) -> None:
    if not image:
        raise InvalidArgument("empty image: the request's image field has no bytes")
    if len(image) > limits.max_image_bytes:
        raise ResourceExhausted(
            f"image of {len(image)} bytes exceeds the limit of {limits.max_image_bytes} bytes"
        )


class EmbeddingRunner:
    """Runs the CPU/GPU-bound embedding off the event loop, a bounded number at a time (more
    threads than cores only add contention)."""

    def __init__(self, embedder: QueryEmbedder, concurrency: int = 2) -> None:
        self.embedder = embedder
        self._slots = asyncio.Semaphore(concurrency)

    async def embed(self, image: bytes) -> np.ndarray:
        async with self._slots:
            return await asyncio.to_thread(self.embedder.embed, image)
