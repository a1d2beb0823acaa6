"""Filters and caches through a real coordinator over real shard servers and real indexes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow.compute as pc
import pytest

from cbir.client import CoordinatorClient, SearchResult
from cbir.errors import InvalidArgument
from cbir.ids import shards_of
from coordinator.caching import CacheConfig
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import ShardServer
from tests.build_index import fixtures as fx
from tests.coordinator.harness import LoopThread, wait_for
from tests.shard_server import filter_fixtures as ff
from tests.shard_server.conftest import config

pytestmark = pytest.mark.slow
SHARDS = 2


@dataclass
class Running:
    address: str
    coordinator: CoordinatorServer
    shards: list[ShardServer]

    def lookups(self, cache: str, result: str) -> float:
        value = self.coordinator.metrics.registry.get_sample_value(
            "cbir_coordinator_cache_lookups_total", {"cache": cache, "result": result})
        return value or 0.0

    def roll(self, root: str) -> None:
        """LoadIndex through each shard's loopback admin port, one shard after the other."""
        for shard in self.shards:
            with grpc.insecure_channel(f"127.0.0.1:{shard.admin_port}") as channel:
                reply = cbir_pb2_grpc.ShardStub(channel).LoadIndex(
                    cbir_pb2.LoadIndexRequest(index_uri=root), timeout=30)
                assert reply.swapped


def start(loop: LoopThread, root: str, allowed: str, cache: CacheConfig,
          embedder: object = None) -> Running:
    async def go() -> Running:
        shards = [ShardServer(dataclasses.replace(config(root, shard=s), admin_port=0,
                                                  allowed_index_root=allowed))
                  for s in range(SHARDS)]
        for s in shards:
            await s.start()
        topology = {i: (f"127.0.0.1:{s.port}",) for i, s in enumerate(shards)}
        cfg = CoordinatorConfig(num_shards=SHARDS, port=0, version_interval_s=0.1, cache=cache)
        factory = (lambda: embedder) if embedder is not None else None
        coordinator = CoordinatorServer(cfg, StaticTopology(topology), factory)  # type: ignore[arg-type]
        await coordinator.start()
        await asyncio.wait_for(coordinator.ready.wait(), 30)
        return Running(f"127.0.0.1:{coordinator.port}", coordinator, shards)

    return loop.run(go(), timeout=120)


def stop(loop: LoopThread, running: Running) -> None:
    loop.run(running.coordinator.stop(0))
    for s in running.shards:
        loop.run(s.stop(0))


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[ff.MetaIndex, ff.MetaIndex]:
    tmp = tmp_path_factory.mktemp("coordfilter")
    v1 = ff.build_meta_index(tmp, "v1", fx.random_vectors(1200, 16, seed=1), "Flat", seed=1)
    v2 = ff.build_meta_index(tmp, "v2", fx.random_vectors(900, 16, seed=2), "Flat", seed=2)
    return v1, v2


@pytest.fixture
def running(loop_thread: LoopThread, indexes: tuple[ff.MetaIndex, ff.MetaIndex],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    allowed = str(tmp_path_factory.getbasetemp())
    r = start(loop_thread, indexes[0].root, allowed, CacheConfig())
    yield r
    stop(loop_thread, r)


def pct_mask(index: ff.MetaIndex, pct: int) -> np.ndarray:
    return np.asarray(index.table.column("pct").to_numpy()) < pct


def test_filtered_queries_equal_brute_force_over_the_filtered_rows(
        running: Running, indexes: tuple[ff.MetaIndex, ff.MetaIndex]) -> None:
    v1 = indexes[0]
    label = pc.map_lookup(v1.table.column("attributes"), "label", "first").to_pylist()
    dog = np.array([x == "dog" for x in label])
    with CoordinatorClient(running.address, timeout_s=10) as client:
        for text, mask in [("pct < 100", pct_mask(v1, 100)),
                           ("label = 'dog' AND pct < 600", dog & pct_mask(v1, 600)),
                           ("pct < 3", pct_mask(v1, 3))]:
            for q in fx.random_vectors(3, 16, seed=5):
                got = client.search_vector(q, k=10, filter=text)
                assert not got.partial
                assert [h.image_id for h in got.hits] == ff.brute_force(v1, mask, q, 10)
        by_id = client.search_id(int(v1.ids[0]), k=5, filter="pct >= 500")
        assert all(v1.table.column("pct")[int(np.flatnonzero(v1.ids == h.image_id)[0])]
                   .as_py() >= 500 for h in by_id.hits)


def test_info_shows_columns_and_bad_filters_are_invalid_argument(running: Running) -> None:
    with CoordinatorClient(running.address, timeout_s=10) as client:
        info = client.info()
        assert info.metadata_columns["pct"] == "int32"
        assert info.metadata_columns["label"] == "string"
        for text, names in [("colour = 'red'", "unknown column 'colour'"),
                            ("pct < 'x'", "'pct' is int32"),
                            ("pct <<< 3", "cannot parse")]:
            with pytest.raises(InvalidArgument, match=names):
                client.search_vector(fx.random_vectors(1, 16)[0], k=5, filter=text)
        assert client.search_vector(fx.random_vectors(1, 16)[0], k=5).hits  # still serving


def truth(result: SearchResult, by_version: dict[str, ff.MetaIndex], query: np.ndarray,
          pct: int | None, k: int) -> list[int]:
    """What a fresh, uncached search in the answer's own version returns (shards that did not
    answer left out)."""
    index = by_version[result.index_version]
    mask = np.ones(len(index.ids), bool) if pct is None else pct_mask(index, pct)
    answered = ~np.isin(shards_of(index.ids, SHARDS), list(result.failed_shards))
    return ff.brute_force(index, mask & answered, query, k)


def test_cached_answers_are_never_stale_across_index_rolls(
        running: Running, indexes: tuple[ff.MetaIndex, ff.MetaIndex]) -> None:
    v1, v2 = indexes
    by_version = {v1.version: v1, v2.version: v2}
    queries = fx.random_vectors(3, 16, seed=9)
    asked = stale = 0
    with CoordinatorClient(running.address, timeout_s=10) as client:
        for roll, target in enumerate([v2, v1, v2, v1]):
            for _ in range(4):  # repeated queries: hits from the cache
                for i, q in enumerate(queries):
                    pct = None if i == 0 else 300
                    got = client.search_vector(q, k=10, filter="" if pct is None else
                                               f"pct < {pct}")
                    asked += 1
                    stale += [h.image_id for h in got.hits] != truth(got, by_version, q, pct, 10)
            running.roll(target.root)
            version = target.version
            assert wait_for(lambda: client.info().index_version == version, 10), roll  # noqa: B023
            fresh = client.search_vector(queries[0], k=10)
            assert fresh.index_version == target.version  # the first answer after the roll
            stale += [h.image_id for h in fresh.hits] != truth(fresh, by_version, queries[0],
                                                               None, 10)
    assert stale == 0, f"{stale} stale of {asked}"
    assert running.lookups("result", "hit") >= asked / 2  # the cache did serve


def test_a_disabled_cache_counts_nothing(loop_thread: LoopThread,
                                         indexes: tuple[ff.MetaIndex, ff.MetaIndex],
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    off = CacheConfig(result_cache_bytes=0, embedding_cache_bytes=0)
    r = start(loop_thread, indexes[0].root, str(tmp_path_factory.getbasetemp()), off)
    try:
        with CoordinatorClient(r.address, timeout_s=10) as client:
            q = fx.random_vectors(1, 16)[0]
            first, again = client.search_vector(q, k=5), client.search_vector(q, k=5)
            assert first.hits == again.hits
        assert r.lookups("result", "hit") == r.lookups("result", "miss") == 0
    finally:
        stop(loop_thread, r)


def test_filtered_image_query_hits_all_pass_the_filter(
        loop_thread: LoopThread, photos: list[object], tmp_path: Path) -> None:
    """Real model, real photos: index their embeddings with metadata, then an image query
    under a filter; every hit's row in the Parquet passes it. The same image again (other k)
    is embedded once: the embedding cache answers."""
    pytest.importorskip("torch")
    from coordinator.query_embedder import load_query_embedder
    from demo.photos import Photo, encode_jpeg

    embedder = load_query_embedder("efficientnet_lite0", None, "cpu")
    chosen: list[Photo] = photos[:12]  # type: ignore[assignment]
    jpegs = [encode_jpeg(p.pixels) for p in chosen]
    vectors = np.stack([v for v in embedder.embed_batch(jpegs) if isinstance(v, np.ndarray)])
    index = ff.build_meta_index(tmp_path, "photos", vectors, "Flat", seed=4,
                                model_version=embedder.version)
    r = start(loop_thread, index.root, str(tmp_path), CacheConfig(), embedder)
    try:
        with CoordinatorClient(r.address, timeout_s=30) as client:
            got = client.search_image(jpegs[0], k=12, filter="pct < 500")
            again = client.search_image(jpegs[0], k=11, filter="pct < 500")
        pct = dict(zip(index.ids.tolist(), index.table.column("pct").to_pylist(), strict=True))
        assert got.hits and all(pct[h.image_id] < 500 for h in got.hits)
        assert [h.image_id for h in got.hits] == ff.brute_force(
            index, pct_mask(index, 500), vectors[0], 12)
        assert [h.image_id for h in again.hits] == [h.image_id for h in got.hits][:11]
        assert r.lookups("embedding", "hit") == 1
    finally:
        stop(loop_thread, r)


def test_cbir_query_filter_flag(running: Running, indexes: tuple[ff.MetaIndex, ff.MetaIndex],
                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cbir.cli import main

    v1 = indexes[0]
    pct = dict(zip(v1.ids.tolist(), v1.table.column("pct").to_pylist(), strict=True))
    assert main(["query", "--coordinator", running.address, "--image-id", str(int(v1.ids[3])),
                 "--k", "7", "--filter", "pct < 100", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 7 and all(pct[h["image_id"]] < 100 for h in hits)
    assert main(["query", "--coordinator", running.address, "--image-id", str(int(v1.ids[3])),
                 "--filter", "colour = 'red'"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown column 'colour'" in err


def test_cbir_info_lists_the_filter_columns(running: Running,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cbir.cli import main

    assert main(["info", "--coordinator", running.address, "--json",
                 "--sample-seconds", "0.1"]) == 0
    columns = {c["name"]: c["type"] for c in json.loads(capsys.readouterr().out)
               ["filter_columns"]}
    assert columns["pct"] == "int32" and columns["last_modified"] == "timestamp[ms, tz=UTC]"
