"""Adding a shard's vectors to its trained index chunk by chunk, with inverted lists sized once.

Faiss grows each inverted list as a ``std::vector``: every add that overflows a list doubles its
capacity, so after chunked adds an IVF index holds up to 2x its codes in RAM (~1.9x on a
200k-vector ``IVF512,PQ32`` shard, from RSS growth: ~15 MB for an 8 MB index). For an IVF
index on Faiss's array lists (alone, or behind a pre-transform such as OPQ or PCA),
``add_in_chunks`` first assigns every vector to its list (one pass, 8 bytes a vector kept),
reserves each list's exact size, then adds each chunk with those assignments
(``IndexIVF.add_core``), so the coarse quantizer runs once per vector as in a plain add. The
lists, codes and ids are identical to ``add_with_ids``'s (tests/build_index/test_adding.py);
only the spare capacity is gone. Any other index is added to with ``add_with_ids``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faiss
import numpy as np

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # a fresh pass each call


def _plain_ivf(index: faiss.Index) -> tuple[Any, Any] | None:
    """(the IVF, its transforms) when ids go straight into an IVF on array lists; else None."""
    outer = faiss.downcast_index(index)
    transforms: Any = None
    inner = outer
    if isinstance(outer, faiss.IndexPreTransform):
        transforms, inner = outer.chain, faiss.downcast_index(outer.index)
    if not isinstance(inner, faiss.IndexIVF):
        return None
    lists = inner.invlists
    if lists is None or not isinstance(faiss.downcast_InvertedLists(lists),
                                       faiss.ArrayInvertedLists):
        return None
    return inner, transforms


def _transformed(transforms: Any, vectors: np.ndarray) -> np.ndarray:
    if transforms is None:
        return vectors
    for i in range(transforms.size()):
        vectors = transforms.at(i).apply(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _reserve(ivf: Any, counts: np.ndarray) -> None:
    """Each list's capacity raised to its size after the adds: ``resize`` up allocates exactly
    (from empty), ``resize`` back down keeps that capacity for the appends to fill."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no in np.flatnonzero(counts):
        held = lists.list_size(int(list_no))
        lists.resize(int(list_no), held + int(counts[list_no]))
        lists.resize(int(list_no), held)


def add_in_chunks(index: faiss.Index,
                  chunks: Chunks) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Add every (ids, vectors) chunk to ``index``, yielding each one once it is added."""
    found = _plain_ivf(index)
    if found is None:
        for ids, vectors in chunks():
            index.add_with_ids(vectors, ids)
            yield ids, vectors
        return
    ivf, transforms = found
    assigned = [ivf.quantizer.assign(_transformed(transforms, vectors), 1).ravel()
                for _, vectors in chunks()]
    lists = np.concatenate([np.empty(0, np.int64), *assigned]).astype(np.int64)
    del assigned
    _reserve(ivf, np.bincount(lists, minlength=ivf.nlist))
    start = 0
    for ids, vectors in chunks():
        x = _transformed(transforms, vectors)
        where = np.ascontiguousarray(lists[start:start + len(ids)])
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ivf.add_core(len(ids), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(where))
        start += len(ids)
        yield ids, vectors
    index.ntotal = ivf.ntotal  # a pre-transform counts what its add would have
