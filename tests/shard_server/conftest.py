"""Small real indexes built with the real build, and real gRPC servers on 127.0.0.1 port 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.ids import image_id, shards_of
from cbir.limits import DEFAULT_LIMITS, Limits
from jobs.build_index.build import BuildConfig, build_index
from protos import cbir_pb2_grpc
from shard_server.index_store import Expectations
from shard_server.searcher import SearcherConfig
from shard_server.server import ServerConfig, ThreadedServer, serve_in_thread
from tests.build_index import fixtures as fx

DIM = 16
N = 800
SHARDS = 2


@dataclass(frozen=True)
class BuiltIndex:
    root: str
    keys: list[str]
    vectors: np.ndarray
    ids: np.ndarray
    version: str

    def shard_rows(self, shard: int) -> np.ndarray:
        return np.flatnonzero(shards_of(self.ids, SHARDS) == shard)


def build(tmp: Path, name: str, n: int = N, seed: int = 0, factory: str | None = None,
          dim: int = DIM) -> BuiltIndex:
    keys = fx.keys_for(n, bucket=name)
    vectors = fx.random_vectors(n, dim, seed=seed)
    emb = str(tmp / f"{name}-emb")
    fx.write_run(emb, fx.table(keys, vectors))
    top = build_index(BuildConfig(emb, str(tmp / name), SHARDS, factory, tune_queries=100))
    assert top is not None
    return BuiltIndex(str(tmp / name), keys, vectors,
                      np.array([image_id(k) for k in keys]), top.index_version)


@pytest.fixture(scope="session")
def flat_index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("flat"), "v1")


@pytest.fixture(scope="session")
def flat_index_v2(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("flat2"), "v2", n=500, seed=1)


@pytest.fixture(scope="session")
def ivf_index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("ivf"), "ivf", n=3000, factory="IVF16,SQ8")


def config(root: str, shard: int = 0, limits: Limits = DEFAULT_LIMITS,
           expect: Expectations | None = None, **kw: object) -> ServerConfig:
    # The served default keeps a swapped-out version 120 s; these tests check the swap itself.
    kw.setdefault("keep_previous_s", 0.0)
    return ServerConfig(index_uri=root, port=0, drain_s=0.0,
                        searcher=SearcherConfig(shard=shard, expect=expect or Expectations(),
                                                limits=limits, **kw))  # type: ignore[arg-type]


def with_admin(cfg: ServerConfig, root: str) -> ServerConfig:
    """``cfg`` plus a loopback admin port (any free port) and this allowed index root."""
    return dataclasses.replace(cfg, admin_port=0, allowed_index_root=root)


@pytest.fixture
def server(flat_index: BuiltIndex, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[ThreadedServer]:
    # Every index these tests build lies under pytest's base temp folder.
    root = str(tmp_path_factory.getbasetemp())
    with serve_in_thread(with_admin(config(flat_index.root), root)) as running:
        yield running


@pytest.fixture
def stub(server: ThreadedServer) -> Iterator[cbir_pb2_grpc.ShardStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield cbir_pb2_grpc.ShardStub(channel)


@pytest.fixture
def admin_stub(server: ThreadedServer) -> Iterator[cbir_pb2_grpc.ShardStub]:
    """The same server's loopback admin port, where LoadIndex needs no token."""
    assert server.server is not None
    with grpc.insecure_channel(f"127.0.0.1:{server.server.admin_port}") as channel:
        yield cbir_pb2_grpc.ShardStub(channel)
