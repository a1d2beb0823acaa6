"""Filtered search through real shard servers over real built indexes (docs/filters.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cbir.ids import shards_of
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.filtering import FilterConfig
from shard_server.server import serve_in_thread
from tests.build_index import fixtures as fx
from tests.shard_server import filter_fixtures as ff
from tests.shard_server.conftest import config

Mask = Callable[[pa.Table], np.ndarray]


def col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False))


def label(t: pa.Table) -> np.ndarray:
    values = pc.map_lookup(t.column("attributes"), "label", "first").to_pylist()
    return np.array([v if v is not None else "" for v in values], dtype=object)


def ts(text: str) -> np.datetime64:
    return np.datetime64(dt.datetime.fromisoformat(text).replace(tzinfo=None), "ms")


# (filter, the same condition in numpy): every operator, every column type.
CASES: list[tuple[str, Mask]] = [
    ("pct < 500", lambda t: col(t, "pct") < 500),
    ("pct <= 99 AND pct >= 90", lambda t: (col(t, "pct") <= 99) & (col(t, "pct") >= 90)),
    ("width > 1500 AND content_type = 'image/png'",
     lambda t: (col(t, "width") > 1500) & (col(t, "content_type") == "image/png")),
    ("pct != 3 AND pct <> 4 AND pct < 20",
     lambda t: (col(t, "pct") != 3) & (col(t, "pct") != 4) & (col(t, "pct") < 20)),
    ("label IN ('cat', 'dog')", lambda t: np.isin(label(t), ["cat", "dog"])),
    ("NOT label IN ('cat')", lambda t: (label(t) != "cat") & (label(t) != "")),
    ("label IS NULL", lambda t: label(t) == ""),
    ("label IS NOT NULL AND flag", lambda t: (label(t) != "") & col(t, "flag")),
    ("(score > 0.97 OR height <= 40) AND NOT flag",
     lambda t: ((col(t, "score") > 0.97) | (col(t, "height") <= 40)) & ~col(t, "flag")),
    ("last_modified >= '2024-06-01' AND last_modified < '2024-06-15T00:00:00+00:00'",
     lambda t: (col(t, "last_modified") >= ts("2024-06-01"))
     & (col(t, "last_modified") < ts("2024-06-15"))),
    ("size < 100000", lambda t: col(t, "bytes") < 100_000),
    ("key LIKE 's3://flat/img/00001%'",
     lambda t: np.char.startswith(col(t, "key").astype(str), "s3://flat/img/00001")),
    ("image_id < 1000000000000000000", lambda t: col(t, "image_id") < 10**18),
    ("pct > 5000", lambda t: np.zeros(t.num_rows, bool)),
]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> ff.MetaIndex:
    return ff.build_meta_index(tmp_path_factory.mktemp("fflat"), "flat",
                               fx.random_vectors(3000, 16, seed=3), "Flat")


def open_stub(root: str, shard: int = 0, filter_config: FilterConfig | None = None
              ) -> Iterator[cbir_pb2_grpc.ShardStub]:
    cfg = config(root, shard, filter=filter_config or FilterConfig())
    with serve_in_thread(cfg) as running, \
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield cbir_pb2_grpc.ShardStub(channel)


@pytest.fixture(scope="module")
def flat_stub(flat: ff.MetaIndex) -> Iterator[cbir_pb2_grpc.ShardStub]:
    yield from open_stub(flat.root)


def search(stub: cbir_pb2_grpc.ShardStub, queries: np.ndarray, k: int, flt: str,
           **params: int) -> np.ndarray:
    reply = stub.Search(cbir_pb2.ShardSearchRequest(
        vectors=np.ascontiguousarray(queries, "<f4").tobytes(), dim=queries.shape[1], k=k,
        filter=flt, params=cbir_pb2.SearchParams(**params)), timeout=30)
    return np.frombuffer(reply.ids, "<i8").reshape(len(queries), k)


def test_stats_lists_every_metadata_column_with_its_type(
        flat_stub: cbir_pb2_grpc.ShardStub) -> None:
    stats = flat_stub.Stats(cbir_pb2.StatsRequest(), timeout=10)
    columns = {c.name: c.type for c in stats.metadata_columns}
    assert columns == {
        "image_id": "int64", "key": "string", "width": "int32", "height": "int32",
        "size": "int64", "last_modified": "timestamp[ms, tz=UTC]", "content_type": "string",
        "pct": "int32", "score": "double", "flag": "bool", "label": "string",
    }


@pytest.mark.parametrize(("text", "mask_of"), CASES, ids=[c[0][:40] for c in CASES])
def test_flat_filtered_search_is_exact(flat: ff.MetaIndex, flat_stub: cbir_pb2_grpc.ShardStub,
                                       text: str, mask_of: Mask) -> None:
    in_shard = shards_of(flat.ids, flat.num_shards) == 0
    mask = mask_of(flat.table) & in_shard
    queries = fx.random_vectors(4, 16, seed=11)
    got = search(flat_stub, queries, 10, text)
    for q, row in zip(queries, got, strict=True):
        expected = ff.brute_force(flat, mask, q, 10)
        assert row[: len(expected)].tolist() == expected
        assert (row[len(expected):] == -1).all()
    if mask.sum() > 10:
        assert (got >= 0).all()


@pytest.mark.parametrize(("text", "names"), [
    ("colour = 'red'", "unknown column 'colour'"),
    ("pct <", "cannot parse"),
    ("width = 'big'", "'width' is int32"),
    ("key LIKE '%cat'", "prefix patterns only"),
    ("last_modified > 'yesterday'", "'yesterday' is not an ISO-8601 timestamp"),
    ("pct IN (SELECT 1)", "IN needs a list of literals"),
])
def test_bad_filters_are_invalid_argument_naming_the_problem(
        flat_stub: cbir_pb2_grpc.ShardStub, text: str, names: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        search(flat_stub, fx.random_vectors(1, 16), 5, text)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names in (err.value.details() or "")
    assert (search(flat_stub, fx.random_vectors(1, 16), 5, "pct < 500") >= 0).all()  # still up


# ---------------------------------------------------------------- ANN indexes: recall@10

N_ANN = 20_000
SELECTIVITY = {"50%": 500, "10%": 100, "1%": 10, "0.1%": 1}  # pct < value


@pytest.fixture(scope="module", params=["IVF64,Flat", "HNSW32"])
def ann(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> ff.MetaIndex:
    factory = str(request.param)
    name = factory.replace(",", "-").lower()
    return ff.build_meta_index(tmp_path_factory.mktemp(name), name, fx.glove(N_ANN), factory)


def recall_at_10(index: ff.MetaIndex, stub: cbir_pb2_grpc.ShardStub, pct: int) -> float:
    mask = (col(index.table, "pct") < pct) & (shards_of(index.ids, index.num_shards) == 0)
    queries = fx.glove(40, offset=N_ANN)
    got = search(stub, queries, 10, f"pct < {pct}")
    found = wanted = 0
    for q, row in zip(queries, got, strict=True):
        expected = set(ff.brute_force(index, mask, q, 10))
        found += len(expected & set(row.tolist()))
        wanted += len(expected)
    return found / wanted


@pytest.mark.parametrize("exact", ["default", "selector"])
def test_ann_recall_under_filters(ann: ff.MetaIndex, exact: str) -> None:
    """With the served defaults, and with no row-count threshold, so that at this size 10%
    and 50% go through the Faiss selector (the fraction threshold still sends <= 2% to brute
    force: through the selector HNSW32 reached only ~0.88 at 1% here, docs/filters.md)."""
    chosen = FilterConfig() if exact == "default" else FilterConfig(exact_rows=16)
    for stub in open_stub(ann.root, filter_config=chosen):
        recalls = {name: recall_at_10(ann, stub, pct) for name, pct in SELECTIVITY.items()}
        assert min(recalls.values()) >= 0.95, recalls


def test_plan_is_brute_force_only_below_the_thresholds(flat: ff.MetaIndex) -> None:
    from shard_server.filtering import compile_filter, make_plan
    from shard_server.index_store import Expectations, load_shard

    loaded = load_shard(flat.root, 0, Expectations())
    wide, narrow = compile_filter(loaded, "pct < 500"), compile_filter(loaded, "pct < 10")
    assert make_plan(loaded, wide, FilterConfig(exact_rows=16)).selector is not None
    assert make_plan(loaded, wide, FilterConfig(exact_rows=16)).vectors is None
    plan = make_plan(loaded, narrow, FilterConfig(exact_rows=16))
    assert plan.selector is None and plan.vectors is not None
    assert plan.vectors.shape == (len(plan.ids), 16)
    assert make_plan(loaded, wide, FilterConfig()).vectors is not None  # 750 rows <= 4096
