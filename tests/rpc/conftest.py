"""Fixtures for the gRPC security tests: a throwaway PKI, token files, and a real grpc.aio server
(cbir.rpc.serving.Serving, health + reflection) with a tiny Shard servicer, on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cbir.rpc.auth import AuthConfig
from cbir.rpc.guard import BearerTokenInterceptor
from cbir.rpc.security import TlsConfig, server_credentials
from cbir.rpc.serving import Serving
from protos import cbir_pb2, cbir_pb2_grpc
from tests.rpc.pki import Pki, make_pki

SEARCH_TOKEN = "search-token-5f0c2a9d8e7b6a1c"
ADMIN_TOKEN = "admin-token-9a8b7c6d5e4f3a2b1c"
WRONG_TOKEN = "wrong-token-0123456789abcdef"


class TinyShard(cbir_pb2_grpc.ShardServicer):
    """Just enough of the Shard service to tell an allowed call from a refused one."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Stats(self, request: object, context: object) -> cbir_pb2.StatsResponse:
        self.calls.append("Stats")
        return cbir_pb2.StatsResponse(shard=3, num_shards=4, count=42)

    async def LoadIndex(self, request: object, context: object) -> cbir_pb2.LoadIndexResponse:
        self.calls.append("LoadIndex")
        return cbir_pb2.LoadIndexResponse(swapped=True, index_version="v2")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# who may call\n{SEARCH_TOKEN}\n{ADMIN_TOKEN} admin\n")
    return path


@contextlib.asynccontextmanager
async def running_server(
    tls: TlsConfig | None = None, auth: AuthConfig | None = None, **interceptor_kw: object
) -> AsyncIterator[tuple[str, TinyShard]]:
    """A started server; yields its address and the servicer (to see which calls got through)."""
    interceptors = [BearerTokenInterceptor(auth, **interceptor_kw)] if auth else []  # type: ignore[arg-type]
    serving = Serving(["cbir.v1.Shard"], interceptors=interceptors)
    shard = TinyShard()
    cbir_pb2_grpc.add_ShardServicer_to_server(shard, serving.server)
    port = serving.bind("127.0.0.1", 0, server_credentials(tls) if tls else None)
    await serving.start()
    await serving.set_serving(True)
    try:
        yield f"127.0.0.1:{port}", shard
    finally:
        await serving.server.stop(None)


async def stats(channel: grpc.aio.Channel, **kw: object) -> cbir_pb2.StatsResponse:
    return await cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5, **kw)
