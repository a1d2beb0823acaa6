"""Validation of what a caller sends (pure; raises cbir.errors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbir.errors import InvalidArgument
from cbir.limits import Limits

DEFAULT_K = 10


@dataclass(frozen=True)
class IndexParams:
    """Per-request index search parameters; 0 = the index's default."""

    nprobe: int = 0
    ef_search: int = 0


def resolve_k(k: int, limits: Limits) -> int:
    """The caller's k checked against the limit, 0 meaning the default."""
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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_vector(values: Sequence[float], dim: int) -> np.ndarray:
    """``values`` as float64. The length is checked before any conversion: a request may carry
    millions of floats, and converting them first would cost memory the answer never needs."""
    if len(values) != dim:
        raise InvalidArgument(f"query vector has {len(values)} values; the index has dim {dim}")
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise InvalidArgument("query vector contains NaN or infinite values")
    return vector


def prepare_query(vector: np.ndarray, metric: str) -> np.ndarray:
    """The float32 query the shards search with. For metric "ip" (cosine on L2-normalised
    embeddings) it is L2-normalised, so scores are cosine similarities whatever the caller's
    scale; normalising in float64 keeps [3e38] * D (whose float32 norm overflows) a real
    direction instead of a silent zero query. A zero vector has no direction; for "l2" a vector
    whose squared norm overflows float32 would make every distance infinite."""
    v = np.asarray(vector, dtype=np.float64)
    if metric != "ip":
        with np.errstate(over="ignore"):
            squared = float(np.dot(v, v))
        if not squared <= FLOAT32_MAX:
            raise InvalidArgument("query vector is too large: its distances overflow float32")
        return v.astype(np.float32)
    peak = float(np.abs(v).max(initial=0.0))
    if not peak > 0:
        raise InvalidArgument("a zero vector cannot be a query for metric ip")
    scaled = v / peak  # in [-1, 1]: its norm can neither overflow nor underflow
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)
