"""The proto-free query service on its own (small fakes for the search engine), and that it and
the pure cores it uses stay free of grpc and protobuf."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cbir.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cbir.limits import Limits
from coordinator.queries import IndexParams
from coordinator.search import ClusterInfo, SearchAnswer, StoredVector
from coordinator.service import CoordinatorState, Query, QueryService

ROOT = Path(__file__).resolve().parents[2]
INFO = ClusterInfo(num_shards=2, dim=4, metric="ip", model="m", model_versions=frozenset({"v"}),
                   index_version="i1", reporting_shards=(0, 1))


class FakeSearch:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def search(self, query: np.ndarray, k: int, params: IndexParams,
                     exclude: int | None, deadline: float, request_id: str,
                     filter_text: str = "") -> SearchAnswer:
        self.calls.append((query, k, params, exclude, request_id))
        return SearchAnswer([], (), "i1", "ip")

    async def stored_vector(self, image_id: int, deadline: float, request_id: str
                            ) -> StoredVector:
        return StoredVector(np.array([0.0, 3.0, 0.0, 4.0], dtype=np.float32), 1, 0)


def service(image_queries: bool = False) -> tuple[QueryService, FakeSearch]:
    fake = FakeSearch()
    state = CoordinatorState(image_queries=image_queries, info=INFO)
    return QueryService(Limits(max_k=50), state, fake, 0.02), fake  # type: ignore[arg-type]


def test_vector_query_is_checked_normalised_and_searched() -> None:
    svc, fake = service()
    answer = asyncio.run(svc.search(Query(vector=[2.0, 0, 0, 0], k=0, request_id="r",
                                          params=IndexParams(nprobe=3))))
    assert answer.index_version == "i1"
    query, k, params, exclude, request_id = fake.calls[0]
    assert np.allclose(query, [1, 0, 0, 0]) and k == 10 and params.nprobe == 3
    assert exclude is None and request_id == "r"


def test_image_id_query_fetches_the_stored_vector_and_may_exclude_it() -> None:
    svc, fake = service()
    asyncio.run(svc.search(Query(image_id=7, exclude_query_image=True, k=5)))
    query, k, _, exclude, _ = fake.calls[0]
    assert np.allclose(query, [0, 0.6, 0, 0.8]) and k == 5 and exclude == 7


@pytest.mark.parametrize(("query", "error", "message"), [
    (Query(vector=[1.0] * 4, time_remaining_s=0.001), DeadlineExceeded, "too short"),
    (Query(vector=[1.0] * 4, k=51), InvalidArgument, "k must be between 1 and 50"),
    (Query(vector=[1.0] * 5), InvalidArgument, "has 5 values; the index has dim 4"),
    (Query(image=b"\x89PNG"), FailedPrecondition, "image queries are disabled"),
    (Query(), InvalidArgument, "needs one of"),
])
def test_bad_queries_raise_core_errors(query: Query, error: type[Exception], message: str
                                       ) -> None:
    svc, fake = service()
    with pytest.raises(error, match=message):
        asyncio.run(svc.search(query))
    assert fake.calls == []


def test_query_kind() -> None:
    assert Query(image=b"x").kind == "image" and Query(image_id=0).kind == "image_id"
    assert Query(vector=[]).kind == "vector" and Query().kind == "none"


@pytest.mark.parametrize("module", ["coordinator/service.py", "coordinator/queries.py",
                                    "cbir/merge.py", "cbir/batching.py", "cbir/rpc/deadlines.py"])
def test_pure_cores_import_no_grpc_or_protobuf(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] in ("grpc", "protos", "google")}
