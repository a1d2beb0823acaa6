"""Adding with exactly sized inverted lists (``adding.add_in_chunks``) builds the same index as
Faiss's own ``add_with_ids`` of the same chunks (byte for byte once serialised), for every kind
of index cbir builds, on the fast path or not."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from jobs.build_index import adding
from jobs.build_index.build import empty_index
from tests.build_index import fixtures as fx

FACTORIES = ["IVF32,PQ8", "IVF32,Flat", "IVF32,SQ8", "OPQ8,IVF32,PQ8", "PCA16,IVF32,Flat",  # cbir
             # wraps every non-IVF factory in IDMap2 (select.faiss_factory)
             "IDMap2,HNSW8", "IDMap2,Flat", "IDMap2,PQ8", "PQ8"]


def _chunks(vectors: np.ndarray, ids: np.ndarray, size: int) -> adding.Chunks:
    return lambda: ((ids[i:i + size], vectors[i:i + size]) for i in range(0, len(ids), size))


@pytest.mark.parametrize("factory", FACTORIES)
def test_the_same_index_as_add_with_ids(factory: str) -> None:
    vectors = fx.random_vectors(3_000, 32, seed=1)
    ids = np.arange(3_000, dtype=np.int64) * 7 + 11
    trained = empty_index(32, factory)
    trained.train(vectors[:2_000])
    plain, chunked = faiss.clone_index(trained), faiss.clone_index(trained)
    if factory == "PQ8":  # no ids of its own: Faiss refuses add_with_ids
        with pytest.raises(RuntimeError):
            list(adding.add_in_chunks(chunked, _chunks(vectors, ids, 500)))
        return
    for chunk_ids, chunk in _chunks(vectors, ids, 500)():  # the same chunks: a transform's
        plain.add_with_ids(chunk, chunk_ids)  # BLAS rounding depends on the batch size
    seen = list(adding.add_in_chunks(chunked, _chunks(vectors, ids, 500)))
    assert sum(len(i) for i, _ in seen) == chunked.ntotal == plain.ntotal == 3_000
    assert np.array_equal(faiss.serialize_index(chunked), faiss.serialize_index(plain))
