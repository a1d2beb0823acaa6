"""Malformed requests get a clear status and message, and the server stays up."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cbir.client import CoordinatorClient
from cbir.errors import InvalidArgument, NotFound, ResourceExhausted
from cbir.limits import Limits
from protos import cbir_pb2, cbir_pb2_grpc
from tests.coordinator.harness import DIM, Cluster, LoopThread, start_cluster

LIMITS = Limits(max_k=100, max_image_bytes=2_000, max_message_bytes=64 * 1024)


@pytest.fixture(scope="module")
def small_limits_cluster(loop_thread: LoopThread) -> Iterator[Cluster]:
    cluster = start_cluster(loop_thread, limits=LIMITS)
    yield cluster
    cluster.close()


@pytest.fixture
def client(small_limits_cluster: Cluster) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(small_limits_cluster.address, timeout_s=5) as c:
        yield c
    # Whatever the bad request was, the coordinator still answers good ones.
    with CoordinatorClient(small_limits_cluster.address, timeout_s=5) as c:
        assert len(c.search_vector(np.ones(DIM), k=3).hits) == 3


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([1.0] * (DIM + 1), f"has {DIM + 1} values; the index has dim {DIM}"),
        ([], f"has 0 values; the index has dim {DIM}"),
        ([math.nan] + [1.0] * (DIM - 1), "NaN or infinite"),
        ([math.inf] + [1.0] * (DIM - 1), "NaN or infinite"),
        ([0.0] * DIM, "zero vector"),
    ],
)
def test_bad_vectors(client: CoordinatorClient, vector: list[float], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        client.search_vector(vector, k=3)
    assert "INVALID_ARGUMENT" in str(info.value)


@pytest.mark.parametrize("k", [-1, 101, 10**9])
def test_bad_k(client: CoordinatorClient, k: int) -> None:
    with pytest.raises(InvalidArgument, match="k must be between 1 and 100"):
        client.search_vector(np.ones(DIM), k=k)


def test_k_zero_means_ten(client: CoordinatorClient) -> None:
    assert len(client.search_vector(np.ones(DIM), k=0).hits) == 10


def test_bad_search_params(client: CoordinatorClient) -> None:
    with pytest.raises(InvalidArgument, match="nprobe=-1"):
        client.search_vector(np.ones(DIM), k=3, nprobe=-1)


def test_empty_image(client: CoordinatorClient) -> None:
    with pytest.raises(InvalidArgument, match="empty image"):
        client.search_image(b"", k=3)


def test_garbage_image_reports_the_decoder_reason(client: CoordinatorClient) -> None:
    with pytest.raises(InvalidArgument, match="not_an_image: cannot identify image file"):
        client.search_image(b"this is not an image", k=3)


def test_oversized_image(client: CoordinatorClient) -> None:
    with pytest.raises(ResourceExhausted, match="exceeds the limit of 2000 bytes"):
        client.search_image(b"\x89PNG" + b"x" * 5_000, k=3)


def test_oversized_message(client: CoordinatorClient) -> None:
    with pytest.raises(ResourceExhausted, match="RESOURCE_EXHAUSTED"):
        client.search_image(b"\x89PNG" + b"x" * 100_000, k=3)


def test_unknown_and_negative_image_ids(client: CoordinatorClient) -> None:
    with pytest.raises(NotFound, match="unknown image id 12345"):
        client.search_id(12345, k=3)
    with pytest.raises(InvalidArgument, match="non-negative"):
        client.search_id(-5, k=3)


def test_request_without_a_query(small_limits_cluster: Cluster) -> None:
    with grpc.insecure_channel(small_limits_cluster.address) as channel:
        stub = cbir_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(cbir_pb2.SearchRequest(k=3), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs one of: image, vector, image_id" in info.value.details()
