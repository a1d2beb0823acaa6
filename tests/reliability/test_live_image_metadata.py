"""Upserts by image get the metadata a backfilled image has, through real servers and the real
pretrained model: ``cbir serve-shard`` subprocesses (2 shards x 2 replicas) over an index of real
photo embeddings, following a log on moto S3, and a coordinator that embeds with
EfficientNet-Lite0. Image bytes give size, width, height and content type; an object the
coordinator fetches from S3 also gives Last-Modified, Content-Type and its user metadata."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cbir import storage
from cbir.client import CoordinatorClient, UpsertSpec
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from tests.reliability.cluster import Coordinator, ShardProcess, start_replicas
from tests.reliability.test_live_index import eventually
from tests.shard_server import filter_fixtures as ff


class ModelCoordinator(Coordinator):
    embedder: Any = None

    async def _make(self, config: CoordinatorConfig, topology: StaticTopology
                    ) -> CoordinatorServer:
        embedder = self.embedder
        return CoordinatorServer(replace(config, image_queries=True), topology,
                                 embedder_factory=lambda: embedder)


def encode(pixels: np.ndarray, size: tuple[int, int], kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).resize(size).save(out, format=kind)
    return out.getvalue()


@pytest.fixture
def model_cluster(photos: list[Any], bucket: str, tmp_path: Path
                  ) -> Iterator[tuple[str, list[Any]]]:
    pytest.importorskip("torch")
    from coordinator.query_embedder import load_query_embedder

    embedder = load_query_embedder("efficientnet_lite0", None, "cpu")
    held_back, indexed = photos[:2], photos[2:14]
    jpegs = [encode(p.pixels, (160, 120), "JPEG") for p in indexed]
    vectors = np.stack([v for v in embedder.embed_batch(jpegs) if isinstance(v, np.ndarray)])
    index = ff.build_meta_index(tmp_path, "photos", vectors, "Flat", seed=9,
                                model_version=embedder.version)
    wal = f"s3://{bucket}/wal"
    replicas = start_replicas(lambda s: ShardProcess(
        s, ["--index", index.root], tmp_path, ["--wal", wal, "--wal-interval", "0.2"]))
    ModelCoordinator.embedder = embedder
    coordinator = ModelCoordinator(replicas, wal=wal)
    try:
        yield f"127.0.0.1:{coordinator.port}", held_back
    finally:
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()


def test_upserts_by_image_get_the_objects_metadata(
        model_cluster: tuple[str, list[Any]], bucket: str) -> None:
    address, (first, second) = model_cluster
    given = encode(first.pixels, (301, 157), "JPEG")
    fetched = encode(second.pixels, (97, 211), "PNG")
    given_key, fetched_key = f"s3://{bucket}/live/given.jpg", f"s3://{bucket}/live/fetched.png"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=2)
    storage.s3_client().put_object(Bucket=bucket, Key="live/fetched.png", Body=fetched,
                                   ContentType="image/png", Metadata={"label": "fetched"})
    with CoordinatorClient(address, timeout_s=60) as client:
        results = client.upsert([UpsertSpec(given_key, image=given,
                                            attributes={"label": "given"}),
                                 UpsertSpec(fetched_key)])
        assert [r.status for r in results] == ["ok", "ok"], [r.reason for r in results]
        eventually(lambda: client.search_image(given, k=1).hits[0].key == given_key)
        eventually(lambda: client.search_image(fetched, k=1).hits[0].key == fetched_key)

        def top(image: bytes, text: str) -> list[str]:
            return [h.key for h in client.search_image(image, k=1, filter=text).hits]

        size = len(given)
        assert top(given, f"width = 301 AND height = 157 AND size = {size} AND "
                          "content_type = 'image/jpeg' AND label = 'given'") == [given_key]
        assert top(given, "last_modified IS NULL") == [given_key]  # bytes given: no S3 date
        assert top(fetched, f"width = 97 AND height = 211 AND size = {len(fetched)} AND "
                            "content_type = 'image/png' AND label = 'fetched' AND "
                            f"last_modified >= '{before.isoformat()}'") == [fetched_key]
        # A filter the new rows fail keeps them out.
        assert given_key not in top(given, "width = 300")
        assert fetched_key not in top(fetched, "label = 'given'")
