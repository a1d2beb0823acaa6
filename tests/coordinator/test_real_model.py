"""The query path with the real default model (EfficientNet-Lite0, shipped offline)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from cbir.client import CoordinatorClient
from cbir.errors import BadImage, InvalidArgument
from cbir.ids import image_id
from coordinator.query_embedder import CbirQueryEmbedder, QueryEmbedder, load_query_embedder
from demo.photos import Photo, encode_jpeg
from tests.coordinator.harness import Cluster, LoopThread, ShardData, flat_top_k, start_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> QueryEmbedder:
    pytest.importorskip("torch")
    return load_query_embedder("efficientnet_lite0", None, "cpu")


@pytest.fixture(scope="module")
def photo_cluster(loop_thread: LoopThread, embedder: QueryEmbedder,
                  photos: list[Photo]) -> Iterator[tuple[Cluster, list[bytes]]]:
    chosen = photos[:8]
    jpegs = [encode_jpeg(p.pixels) for p in chosen]
    vectors = np.stack([v for v in embedder.embed_batch(jpegs) if isinstance(v, np.ndarray)])
    keys = [f"s3://photos/{p.name}.jpg" for p in chosen]
    data = ShardData(np.array([image_id(k) for k in keys], dtype=np.int64), vectors, keys)
    cluster = start_cluster(loop_thread, data=data, embedder_factory=lambda: embedder,
                            model_version=embedder.version)
    yield cluster, jpegs
    cluster.close()


def test_query_embedding_equals_batch_embedding(embedder: QueryEmbedder,
                                                photos: list[Photo]) -> None:
    from cbir.embedding import load_embedder

    jpeg = encode_jpeg(photos[0].pixels)
    batch = load_embedder("efficientnet_lite0", None, "cpu").embed_bytes([jpeg]).vectors[0]
    (query,) = embedder.embed_batch([jpeg])
    assert isinstance(query, np.ndarray)
    np.testing.assert_allclose(query, batch, rtol=1e-5, atol=1e-6)
    assert isinstance(embedder, CbirQueryEmbedder)


def test_bad_bytes_are_reported_per_image(embedder: QueryEmbedder) -> None:
    out = embedder.embed_batch([b"garbage", b""])
    assert all(isinstance(o, BadImage) for o in out)


def test_a_photo_finds_itself_first(photo_cluster: tuple[Cluster, list[bytes]]) -> None:
    cluster, jpegs = photo_cluster
    with CoordinatorClient(cluster.address, timeout_s=30) as client:
        for i in (0, 3, 5):
            result = client.search_image(jpegs[i], k=3)
            assert result.hits[0].image_id == int(cluster.data.ids[i])
            assert result.hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert [h.image_id for h in result.hits] == flat_top_k(
                cluster.data, cluster.data.vectors[i], 3)
        with pytest.raises(InvalidArgument, match="not_an_image"):
            client.search_image(b"definitely not a jpeg", k=3)
