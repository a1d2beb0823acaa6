"""The pieces of the locked admin surface: privileged methods without tokens (refused unless on
the trusted admin port), the ``write`` role, the per-peer lockout window, the refusal summary
and the escaping of untrusted text in logs."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from cbir.errors import InvalidArgument
from cbir.rpc import ratelimit
from cbir.rpc.auth import ADMIN, SEARCH, WRITE, AuthConfig
from cbir.rpc.guard import BearerTokenInterceptor
from cbir.rpc.logs import SafeLogFilter, configure, safe_text
from cbir.rpc.ratelimit import FailureLimit, FailureLimiter, RefusalLog, peer_address
from cbir.rpc.serving import Serving
from protos import cbir_pb2, cbir_pb2_grpc
from tests.rpc.conftest import TinyShard


async def _load(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        assert (await stub.Stats(cbir_pb2.StatsRequest(), timeout=5)).count == 42
        try:
            await stub.LoadIndex(cbir_pb2.LoadIndexRequest(index_uri="x"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("trusted", "expected"), [
    (False, grpc.StatusCode.PERMISSION_DENIED), (True, grpc.StatusCode.OK)])
def test_without_tokens_admin_methods_need_the_trusted_port(
    trusted: bool, expected: grpc.StatusCode
) -> None:
    async def scenario() -> None:
        serving = Serving(["cbir.v1.Shard"],
                          interceptors=[BearerTokenInterceptor(None, trusted=trusted)])
        tiny = TinyShard()
        cbir_pb2_grpc.add_ShardServicer_to_server(tiny, serving.server)
        port = serving.bind("127.0.0.1", 0)
        await serving.start()
        try:
            assert await _load(f"127.0.0.1:{port}") == expected
            assert tiny.calls == (["Stats", "LoadIndex"] if trusted else ["Stats"])
        finally:
            await serving.server.stop(None)

    asyncio.run(scenario())


def test_write_role_parses_and_guards_the_write_methods() -> None:
    auth = AuthConfig.from_tokens([("w" * 20, ["write"]), ("s" * 20, ["search", "write"]),
                                   ("a" * 20, ["admin"])])
    guard = BearerTokenInterceptor(auth)
    assert guard.required_role("/cbir.v1.Coordinator/Upsert") == WRITE
    assert guard.required_role("/cbir.v1.Coordinator/Delete") == WRITE
    assert guard.required_role("/cbir.v1.Shard/LoadIndex") == ADMIN
    assert guard.required_role("/cbir.v1.Coordinator/Search") == SEARCH

    def code(token: str, method: str) -> grpc.StatusCode | None:
        refusal = guard.refusal(method, [("authorization", f"Bearer {token}")])
        return None if refusal is None else refusal[0]

    denied = grpc.StatusCode.PERMISSION_DENIED
    assert code("w" * 20, "/cbir.v1.Coordinator/Upsert") is None
    assert code("w" * 20, "/cbir.v1.Coordinator/Search") == denied
    assert code("s" * 20, "/cbir.v1.Coordinator/Search") is None
    assert code("s" * 20, "/cbir.v1.Shard/LoadIndex") == denied
    assert code("a" * 20, "/cbir.v1.Coordinator/Delete") is None
    with pytest.raises(InvalidArgument, match="roles must be among"):
        AuthConfig.from_tokens([("x" * 20, ["writer"])])


def test_peer_address_drops_the_port() -> None:
    assert peer_address("ipv4:10.0.0.7:53412") == "10.0.0.7"
    assert peer_address("ipv6:[::1]:5000") == "[::1]"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s"


def test_lockout_is_per_address_and_ends_with_the_window() -> None:
    now = [100.0]
    limiter = FailureLimiter(FailureLimit(max_failures=3, interval_s=10), clock=lambda: now[0])
    for port in range(3):  # new connections (ports) from one address add up
        assert limiter.blocked_for(f"ipv4:10.0.0.1:{4000 + port}") == 0
        limiter.failed(f"ipv4:10.0.0.1:{4000 + port}")
    assert limiter.any_blocked()
    assert limiter.blocked_for("ipv4:10.0.0.1:9") == pytest.approx(10)
    assert limiter.blocked_for("ipv4:10.0.0.2:9") == 0  # another address is not affected
    now[0] = 110.0
    assert limiter.blocked_for("ipv4:10.0.0.1:9") == 0 and not limiter.any_blocked()
    limiter.failed("ipv4:10.0.0.1:9")  # a new window starts from zero
    assert limiter.blocked_for("ipv4:10.0.0.1:9") == 0


def test_limiter_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_TRACKED_PEERS", 50)
    limiter = FailureLimiter(FailureLimit(max_failures=2, interval_s=10), clock=lambda: 0.0)
    for i in range(500):
        limiter.failed(f"ipv4:10.1.{i // 256}.{i % 256}:1")
    assert len(limiter._windows) <= 51


def test_refusal_log_summarises_with_exact_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("test.refusals")
    refusals = RefusalLog(logger, interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for i in range(300):
            refusals.refused("/m", "invalid bearer token", f"ipv4:10.0.0.{i % 2}:1")
        now[0] = 11.0
        refusals.refused("/m", "invalid bearer token", "ipv4:10.0.0.1:1")  # no loop: flushes
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "refused /m from 10.0.0.0" in lines[0]
    assert "refused 300 more calls" in lines[1]
    assert "151 x invalid bearer token from 10.0.0.1" in lines[1]  # incl. the last call
    assert "149 x invalid bearer token from 10.0.0.0" in lines[1]


def test_untrusted_text_is_escaped_before_it_is_logged(capsys: pytest.CaptureFixture[str],
                                                       ) -> None:
    hostile = "v2\r\x1b[2K\x1b[31mOK\u202e\x9b\n"
    assert safe_text(hostile) == "v2\\x0d\\x1b[2K\\x1b[31mOK\\u202e\\x9b\\x0a"
    assert safe_text("x" * 1000, 10) == "xxxxxxxxxx...(1000 chars)"
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        configure("text")
        assert any(isinstance(f, SafeLogFilter) for f in handler.filters)
        logging.getLogger("test.escape").warning("pointer says %s; Bearer abcdef123456", hostile)
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "\u202e" not in err
    assert "\\x1b[31mOK" in err and "abcdef123456" not in err
