"""PQ indexes train without Faiss's polysemous code reordering, which only polysemous search
uses (cbir never does) and which made training ~18x slower (docs/build_index.md)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from jobs.build_index import build, embeddings_run
from tests.build_index import fixtures as fx


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "OPQ8,IVF16,PQ8", "PQ8"])
def test_pq_factories_skip_polysemous_training(factory: str) -> None:
    index = build.empty_index(32, factory)
    ivf = faiss.try_extract_index_ivf(index)
    assert not faiss.downcast_index(ivf if ivf is not None else index).do_polysemous_training


def test_the_trained_index_is_the_no_polysemous_factorys(tmp_path: Path) -> None:
    """The build's trained bytes == Faiss's own ``...np`` factory trained on the same sample,
    and searching it gives the same answers (the codes' distances do not depend on it)."""
    n, dim = 6_000, 32
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(fx.keys_for(n), fx.random_vectors(n, dim)))
    config = build.BuildConfig(emb, str(tmp_path / "ix"), 1, "IVF16,PQ8", train_size=4_000,
                               train_device="cpu")
    planned = build.plan(config)
    sample = embeddings_run.read_sample(embeddings_run.open_dataset(emb, dim), dim, 4_000,
                                        config.seed)
    reference = faiss.index_factory(dim, "IVF16,PQ8np", faiss.METRIC_INNER_PRODUCT)
    reference.train(sample)
    assert bytes(faiss.serialize_index(reference)) == planned.trained
    ours = faiss.deserialize_index(np.frombuffer(planned.trained, dtype=np.uint8))
    vectors = fx.random_vectors(500, dim, seed=3)
    for index in (ours, reference):
        index.add(vectors)
    assert np.array_equal(ours.search(vectors[:20], 5)[1], reference.search(vectors[:20], 5)[1])
