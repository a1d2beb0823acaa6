"""What embedding a batch of encoded images returns (every input is a row or a failure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n_ok, dim) float32, L2-normalised rows
    ok: list[int] = field(default_factory=list)  # input index of each row of `vectors`
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per ok image
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, detail)


def merge(parts: list[tuple[list[int], EmbedResult]], dim: int) -> EmbedResult:
    """Results of disjoint subsets (``indices`` maps each subset's positions to the whole
    batch) -> one result in input order."""
    rows: list[tuple[int, np.ndarray, tuple[int, int]]] = []
    failures: list[tuple[int, str, str]] = []
    for indices, res in parts:
        rows += [(indices[i], res.vectors[r], res.sizes[r]) for r, i in enumerate(res.ok)]
        failures += [(indices[i], reason, detail) for i, reason, detail in res.failures]
    rows.sort(key=lambda row: row[0])
    vectors = (np.stack([v for _, v, _ in rows]) if rows
               else np.zeros((0, dim), dtype=np.float32))
    return EmbedResult(vectors, [i for i, _, _ in rows], [s for _, _, s in rows],
                       sorted(failures))
