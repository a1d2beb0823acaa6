"""Bearer tokens on real grpc.aio servers: the right token works, a missing, malformed or unknown
one gets UNAUTHENTICATED, a valid one without the method's role gets PERMISSION_DENIED; health
stays open for probes; no token text reaches an error message or a log record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cbir.rpc.auth import AuthConfig, Secret, bearer_metadata
from cbir.rpc.security import TlsConfig, secure_or_insecure_channel, secure_or_insecure_sync_channel
from protos import cbir_pb2, cbir_pb2_grpc
from tests.rpc.conftest import ADMIN_TOKEN, SEARCH_TOKEN, WRONG_TOKEN, running_server, stats
from tests.rpc.pki import Pki


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def load_index(channel: grpc.aio.Channel, **kw: Any) -> Awaitable[Any]:
    return cbir_pb2_grpc.ShardStub(channel).LoadIndex(cbir_pb2.LoadIndexRequest(), timeout=5, **kw)


def assert_no_secret(text: str) -> None:
    for token in (SEARCH_TOKEN, ADMIN_TOKEN, WRONG_TOKEN):
        assert token not in text


def test_right_token_over_tls_via_call_credentials(pki: Pki, token_file: Path) -> None:
    auth = AuthConfig.from_file(token_file)
    server = TlsConfig(pki.server.cert, pki.server.key)
    client = TlsConfig(ca_file=pki.ca)

    async def scenario() -> None:
        async with running_server(server, auth) as (address, shard):
            token = Secret(SEARCH_TOKEN)
            async with secure_or_insecure_channel(address, client, token=token) as channel:
                assert (await stats(channel)).count == 42
            async with secure_or_insecure_channel(address, client) as channel:
                refused = await failure(stats(channel))
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert shard.calls == ["Stats"]

    asyncio.run(scenario())


def test_right_token_over_plaintext_via_metadata(token_file: Path) -> None:
    """Local development: the token rides as metadata (aio interceptor, sync interceptor and the
    per-call helper)."""
    auth = AuthConfig.from_file(token_file)

    async def scenario() -> None:
        async with running_server(None, auth) as (address, shard):
            async with secure_or_insecure_channel(address, token=Secret(SEARCH_TOKEN)) as ch:
                assert (await stats(ch)).count == 42
            async with secure_or_insecure_channel(address) as channel:
                reply = await stats(channel, metadata=bearer_metadata(Secret(SEARCH_TOKEN)))
                assert reply.count == 42

            def sync_call() -> int:
                token = Secret(SEARCH_TOKEN)
                with secure_or_insecure_sync_channel(address, token=token) as channel:
                    stub = cbir_pb2_grpc.ShardStub(channel)
                    return int(stub.Stats(cbir_pb2.StatsRequest(), timeout=5).count)

            assert await asyncio.to_thread(sync_call) == 42
        assert shard.calls == ["Stats"] * 3

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", f"Bearer {WRONG_TOKEN}"),),
        (("authorization", f"Basic {SEARCH_TOKEN}"),),
        (("authorization", "Bearer "),),
        (("authorization", SEARCH_TOKEN),),
        (("authorization", f"Bearer {SEARCH_TOKEN}"), ("authorization", f"Bearer {WRONG_TOKEN}")),
    ],
    ids=["missing", "wrong", "basic-scheme", "empty", "no-scheme", "two-headers"],
)
def test_missing_wrong_or_malformed_tokens_are_unauthenticated(
    token_file: Path, metadata: tuple[tuple[str, str], ...], caplog: pytest.LogCaptureFixture
) -> None:
    auth = AuthConfig.from_file(token_file)
    caplog.set_level(logging.DEBUG)

    async def scenario() -> grpc.aio.AioRpcError:
        async with (
            running_server(None, auth) as (address, shard),
            secure_or_insecure_channel(address) as channel,
        ):
            refused = await failure(stats(channel, metadata=metadata))
        assert shard.calls == []
        return refused

    refused = asyncio.run(scenario())
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_no_secret(str(refused.details()) + str(refused.debug_error_string()) + str(refused))
    assert_no_secret(caplog.text)
    assert "refused /cbir.v1.Shard/Stats" in caplog.text


def test_token_without_the_role_is_permission_denied(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = AuthConfig.from_file(token_file)
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with running_server(None, auth) as (address, shard):
            async with secure_or_insecure_channel(address, token=Secret(SEARCH_TOKEN)) as ch:
                refused = await failure(load_index(ch))
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
                assert_no_secret(str(refused))
            async with secure_or_insecure_channel(address, token=Secret(ADMIN_TOKEN)) as ch:
                assert (await load_index(ch)).swapped
                assert (await stats(ch)).count == 42  # admin implies search
        assert shard.calls == ["LoadIndex", "Stats"]

    asyncio.run(scenario())
    assert_no_secret(caplog.text)


def test_health_and_reflection_need_no_token(token_file: Path) -> None:
    """Kubernetes probes and `grpcurl list` carry no token."""
    auth = AuthConfig.from_file(token_file)

    async def scenario() -> None:
        async with (
            running_server(None, auth) as (address, _),
            secure_or_insecure_channel(address) as channel,
        ):
            probe = health_pb2_grpc.HealthStub(channel)
            reply = await probe.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
                names = {s.name for s in answer.list_services_response.service}
                assert "cbir.v1.Shard" in names
                break

    asyncio.run(scenario())


def test_streaming_methods_are_refused_too(token_file: Path) -> None:
    """With nothing exempt, a server-streaming call (Health/Watch) without a token is refused
    like a unary one, and with the token it streams."""
    auth = AuthConfig.from_file(token_file)

    async def scenario() -> None:
        async with running_server(None, auth, exempt_methods=()) as (address, _):
            async with secure_or_insecure_channel(address) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                refused = await failure(watch.read())
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            async with secure_or_insecure_channel(address, token=Secret(SEARCH_TOKEN)) as ch:
                watch = health_pb2_grpc.HealthStub(ch).Watch(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()

    asyncio.run(scenario())


def test_mtls_plus_token_both_required(pki: Pki, token_file: Path) -> None:
    """The coordinator → shard hop with everything on: cert AND token needed."""
    auth = AuthConfig.from_file(token_file)
    server = TlsConfig(pki.server.cert, pki.server.key, pki.ca, require_client_cert=True)
    client = TlsConfig(pki.client.cert, pki.client.key, pki.ca)

    async def scenario() -> None:
        async with running_server(server, auth) as (address, shard):
            async with secure_or_insecure_channel(address, client, token=Secret(ADMIN_TOKEN)) as ch:
                assert (await load_index(ch)).swapped
            async with secure_or_insecure_channel(address, client) as ch:
                assert (await failure(stats(ch))).code() == grpc.StatusCode.UNAUTHENTICATED
            no_cert = TlsConfig(ca_file=pki.ca)
            async with secure_or_insecure_channel(
                address, no_cert, token=Secret(ADMIN_TOKEN)
            ) as ch:
                assert (await failure(stats(ch))).code() == grpc.StatusCode.UNAVAILABLE
        assert shard.calls == ["LoadIndex"]

    asyncio.run(scenario())
