from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from cbir.client import AsyncCoordinatorClient, CoordinatorClient, DeadlineExceeded, Hit
from cbir.errors import InvalidArgument, NotFound, Unavailable
from tests.conftest import free_port
from tests.coordinator.harness import Cluster, flat_top_k


def test_typed_results_for_every_query_kind(cluster: Cluster, tmp_path: Path) -> None:
    image = tmp_path / "q.png"
    image.write_bytes(b"\x89PNG a query image")
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        by_path = client.search_image(image, k=3)
        by_bytes = client.search_image(image.read_bytes(), k=3)
        by_vector = client.search_vector(cluster.data.vectors[2], k=3)
        by_id = client.search_id(int(cluster.data.ids[2]), k=3)
        info = client.info()
    assert by_path.hits == by_bytes.hits
    assert all(isinstance(h, Hit) for h in by_path.hits)
    assert [h.image_id for h in by_vector.hits] == flat_top_k(
        cluster.data, cluster.data.vectors[2], 3)
    assert by_id.hits == by_vector.hits
    assert (info.num_shards, info.dim, info.metric, info.model_version) == (2, 16, "ip", "fake-1")
    as_json = by_vector.to_json()
    assert set(as_json) >= {"hits", "partial", "failed_shards", "index_version"}
    assert set(as_json["hits"][0]) >= {"image_id", "key", "score"}


def test_server_errors_become_cbir_errors_with_the_message(cluster: Cluster) -> None:
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        with pytest.raises(NotFound, match="unknown image id 7"):
            client.search_id(7)
        with pytest.raises(InvalidArgument, match="the index has dim 16"):
            client.search_vector([1.0, 2.0])
        with pytest.raises(InvalidArgument, match="one-dimensional"):
            client.search_vector(np.ones((2, 1)))
        with pytest.raises(InvalidArgument, match="cannot read image file"):
            client.search_image(Path("/nonexistent/x.jpg"))


def test_unreachable_coordinator_is_unavailable() -> None:
    with CoordinatorClient(f"127.0.0.1:{free_port()}", timeout_s=2) as client, \
            pytest.raises(Unavailable, match="UNAVAILABLE"):
        client.info()


def test_a_silent_server_hits_the_call_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with CoordinatorClient(address) as client, pytest.raises(DeadlineExceeded):
            client.search_vector([1.0] * 16, timeout_s=0.3)


def test_async_client(cluster: Cluster) -> None:
    async def main() -> list[int]:
        async with AsyncCoordinatorClient(cluster.address, timeout_s=5) as client:
            result = await client.search_vector(cluster.data.vectors[5], k=4)
            with pytest.raises(NotFound):
                await client.search_id(3)
            return [h.image_id for h in result.hits]

    assert asyncio.run(main()) == flat_top_k(cluster.data, cluster.data.vectors[5], 4)
