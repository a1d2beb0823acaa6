"""The search benchmark's data sets beyond plain GloVe: the 1280-d working point (projected
GloVe) and embeddings of real photos."""

from __future__ import annotations

import numpy as np

from bench import harness
from bench.harness import VectorSet

WIDE_DIM = 1280  # the default model's (EfficientNet-Lite0) embedding dim
WIDE_NOISE = 0.1  # norm of the noise added to each (unit) projected vector


def projected_glove_set(n_base: int, n_queries: int, dim: int = WIDE_DIM,
                        noise: float = WIDE_NOISE, seed: int = 0) -> VectorSet:
    """GloVe rows (a seeded random subset) times a fixed random 50 x ``dim`` matrix, plus
    Gaussian noise of norm ~``noise``, L2-normalised: vectors of a real embedding's width
    whose neighbourhoods are GloVe's, so recall means the same as on the floor."""
    raw = harness.load_glove()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(raw))[: n_base + 2 * n_queries]
    unit = harness.l2_normalise(raw[np.sort(rows)])
    projection = rng.standard_normal((raw.shape[1], dim), dtype=np.float32)
    projection /= np.sqrt(np.float32(raw.shape[1]))
    wide = unit @ projection
    wide += rng.standard_normal(wide.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    return harness.make_vector_set(wide, n_base, n_queries,
                                   f"glove-6b-50d-projected-{dim}d[{n_base}]", seed)


def photo_set(with_edits: bool) -> VectorSet:
    """Real photos: originals (plus, in full runs, crop/rotate/flip edits) are the base; the
    colour and JPEG-quality edits are the held-out queries."""
    from cbir.embedding import load_embedder
    from demo.photos import bundled_photos, edited_copies, encode_jpeg

    photos = bundled_photos()
    base_bytes, query_bytes = [], []
    for photo in photos:
        base_bytes.append(encode_jpeg(photo.pixels))
        for edit, data in edited_copies(photo):
            if edit in ("colour", "jpeg"):
                query_bytes.append(data)
            elif with_edits:
                base_bytes.append(data)
    embedder = load_embedder()
    base = embedder.embed_bytes(base_bytes).vectors
    queries = embedder.embed_bytes(query_bytes).vectors
    truth = harness.exact_topk(base, queries)
    return VectorSet(name=f"photos-{embedder.name}[{len(base)}]", base=base, tune=queries[:0],
                     queries=queries, truth=truth, tune_truth=truth[:0])
