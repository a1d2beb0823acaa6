"""Validation of what a caller sends (pure; raises cbir.errors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbir.errors import InvalidArgument
from cbir.limits import Limits

DEFAULT_K = 10


def check_k(k: int, limits: Limits) -> int:
    if k == 0:
        return DEFAULT_K
    if k < 0 or k > limits.max_k:
        raise InvalidArgument(f"k must be between 1 and {limits.max_k} (0 = {DEFAULT_K}), got {k}")
    return k


def check_params(nprobe: int, ef_search: int, limits: Limits) -> None:
    if nprobe < 0 or ef_search < 0:
        raise InvalidArgument(
            f"search params must be >= 0 (0 = index default), got nprobe={nprobe} "
            f"ef_search={ef_search}"
        )
    # Checked here too: otherwise every shard refuses it and the caller sees UNAVAILABLE.
    if ef_search > limits.max_ef_search:
        raise InvalidArgument(f"ef_search must be <= {limits.max_ef_search}, got {ef_search}")


def check_image_id(image_id: int) -> None:
    if image_id < 0:
        raise InvalidArgument(f"image ids are non-negative 63-bit integers, got {image_id}")


def check_vector(values: Sequence[float], dim: int) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (dim,):
        raise InvalidArgument(f"query vector has {vector.size} values; the index has dim {dim}")
    if not np.isfinite(vector).all():
        raise InvalidArgument("query vector contains NaN or infinite values")
    return vector


def prepare_query(vector: np.ndarray, metric: str) -> np.ndarray:
    """For metric "ip" (cosine on L2-normalised embeddings) the query is L2-normalised too, so
    scores are cosine similarities whatever the caller's scale; a zero vector has no direction."""
    if metric != "ip":
        return vector.astype(np.float32)
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if not norm > 0 or not np.isfinite(norm):
        raise InvalidArgument("a zero vector cannot be a query for metric ip")
    return (vector / norm).astype(np.float32)
