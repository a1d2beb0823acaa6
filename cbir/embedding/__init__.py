"""Embedding: one preprocessing function and one model object shared by the batch job and the
query path, so indexing and querying can never drift.

Public API (stable; the backfill and the coordinator depend on it):

- ``load_embedder(name="efficientnet_lite0", weights=None, device=None) -> Embedder``
  (cached per process and arguments).
- ``Embedder``: ``name``, ``dim``, ``version`` (hash of weights + preprocessing), ``device``;
  ``embed_bytes(list[bytes]) -> EmbedResult`` never raises for a bad image: it reports it.
- ``decode_image(bytes, limits) -> PIL.Image.Image`` raises ``cbir.errors.BadImage(reason)``.
"""

from cbir.embedding.embedder import (
    DEFAULT_MODEL,
    Embedder,
    EmbedResult,
    load_embedder,
    set_torch_threads,
)
from cbir.embedding.models import MODELS, ModelInfo, describe_model
from cbir.embedding.preprocess import PreprocessSpec, decode_image

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "EmbedResult",
    "Embedder",
    "ModelInfo",
    "PreprocessSpec",
    "decode_image",
    "describe_model",
    "load_embedder",
    "set_torch_threads",
]
