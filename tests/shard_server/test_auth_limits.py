"""Failed authentications against a real shard server with tokens (issue 16.2): the reported
burst (500 wrong tokens in well under a second) now locks the address out after the limit -
a right token included, until the window ends - and is logged as two lines with the exact
count instead of one line per call. Health stays open and SERVING throughout."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.rpc.auth import AuthConfig, bearer_metadata
from cbir.rpc.ratelimit import FailureLimit
from cbir.rpc.security import ServerSecurity
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import serve_in_thread
from tests.shard_server.conftest import BuiltIndex, config

TOKEN = "search-token-5f0c2a9d8e7b6a1c"
WRONG = "wrong-token-0123456789abcdef"
BURST = 500
LIMIT = FailureLimit(max_failures=20, interval_s=60.0)


def _stats(stub: cbir_pb2_grpc.ShardStub, token: str) -> grpc.StatusCode:
    try:
        stub.Stats(cbir_pb2.StatsRequest(), timeout=5, metadata=bearer_metadata(token))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_wrong_token_burst_is_locked_out_and_summarised(
    flat_index: BuiltIndex, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    security = ServerSecurity(auth=AuthConfig.from_file(tokens), failure_limit=LIMIT)
    cfg = dataclasses.replace(config(flat_index.root), security=security)
    caplog.set_level(logging.WARNING, logger="cbir.rpc.auth")
    with serve_in_thread(cfg) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.server is not None
        guard = server.server.guards[0]
        stub = cbir_pb2_grpc.ShardStub(channel)
        assert _stats(stub, TOKEN) == grpc.StatusCode.OK
        start = time.perf_counter()
        codes = [_stats(stub, WRONG) for _ in range(BURST)]
        elapsed = time.perf_counter() - start
        assert codes[:LIMIT.max_failures] == [grpc.StatusCode.UNAUTHENTICATED] * 20
        assert set(codes[LIMIT.max_failures:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert _stats(stub, TOKEN) == grpc.StatusCode.RESOURCE_EXHAUSTED  # locked out
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes are exempt

        async def flush() -> None:  # what the server's timer does at the end of the interval
            guard.refusals.flush()

        server.call(flush())
        lines = [r.getMessage() for r in caplog.records if r.name == "cbir.rpc.auth"]
        print(f"\n{BURST} wrong tokens in {elapsed:.2f} s -> {len(lines)} log lines: {lines}")
        assert len(lines) == 2
        assert lines[0].startswith("refused /cbir.v1.Shard/Stats from 127.0.0.1")
        counted = sum(int(n) for n in re.findall(r"(\d+) x ", lines[1]))
        assert f"refused {BURST} more calls" in lines[1] and counted == BURST  # 499 + right one
        assert WRONG not in " ".join(lines) and TOKEN not in " ".join(lines)

        # nor does a known token on a method it may not call: no oracle while locked out
        with pytest.raises(grpc.RpcError) as info:
            stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=flat_index.root), timeout=5,
                           metadata=bearer_metadata(TOKEN))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        later = guard.limiter.clock() + LIMIT.interval_s + 1
        guard.limiter.clock = lambda: later  # the window is over
        assert _stats(stub, TOKEN) == grpc.StatusCode.OK
        assert _stats(stub, WRONG) == grpc.StatusCode.UNAUTHENTICATED  # a fresh window
        with pytest.raises(grpc.RpcError) as info:
            stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=flat_index.root), timeout=5,
                           metadata=bearer_metadata(TOKEN))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
