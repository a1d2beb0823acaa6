"""Embedding: one preprocessing function and one model object shared by the batch job and the
query path, so indexing and querying can never drift.

Public API (stable; the backfill and the coordinator depend on it):

- ``load_embedder(name="efficientnet_lite0", weights=None, device=None) -> Embedder``
  (cached per process and arguments).
- ``Embedder``: ``name``, ``dim``, ``version`` (hash of weights + preprocessing), ``device``;
  ``embed_bytes(list[bytes]) -> EmbedResult`` never raises for a bad image: it reports it.
- ``decode_image(bytes, limits) -> PIL.Image.Image`` raises ``cbir.errors.BadImage(reason)``.
"""
