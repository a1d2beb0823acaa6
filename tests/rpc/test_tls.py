"""TLS and mutual TLS on real grpc.aio servers: the right credentials work, wrong or missing ones
are refused at the handshake (the client sees UNAVAILABLE and no servicer code runs)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.rpc import health
from cbir.rpc.security import TlsConfig, secure_or_insecure_channel, secure_or_insecure_sync_channel
from protos import cbir_pb2, cbir_pb2_grpc
from tests.rpc.conftest import running_server, stats
from tests.rpc.pki import Pki, issue, make_ca


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


def server_tls(pki: Pki, mutual: bool = False) -> TlsConfig:
    return TlsConfig(pki.server.cert, pki.server.key, pki.ca, require_client_cert=mutual)


def test_tls_with_the_right_ca_works(pki: Pki) -> None:
    async def scenario() -> None:
        async with (
            running_server(server_tls(pki)) as (address, shard),
            secure_or_insecure_channel(address, TlsConfig(ca_file=pki.ca)) as channel,
        ):
            reply = await stats(channel)
            probe = health_pb2_grpc.HealthStub(channel)
            status = await probe.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.count == 42 and shard.calls == ["Stats"]
        assert status.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_client_trusting_another_ca_is_refused(pki: Pki) -> None:
    async def scenario() -> None:
        async with (
            running_server(server_tls(pki)) as (address, shard),
            secure_or_insecure_channel(address, TlsConfig(ca_file=pki.other_ca)) as ch,
        ):
            assert await code_of(stats(ch)) == grpc.StatusCode.UNAVAILABLE
        assert shard.calls == []

    asyncio.run(scenario())


def test_server_with_a_cert_from_another_ca_is_refused(pki: Pki) -> None:
    impostor = TlsConfig(pki.other_server.cert, pki.other_server.key)

    async def scenario() -> None:
        async with (
            running_server(impostor) as (address, _),
            secure_or_insecure_channel(address, TlsConfig(ca_file=pki.ca)) as ch,
        ):
            assert await code_of(stats(ch)) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_plaintext_client_cannot_talk_to_a_tls_server(pki: Pki) -> None:
    async def scenario() -> None:
        async with (
            running_server(server_tls(pki)) as (address, shard),
            secure_or_insecure_channel(address, None) as channel,
        ):
            assert await code_of(stats(channel)) == grpc.StatusCode.UNAVAILABLE
        assert shard.calls == []

    asyncio.run(scenario())


def test_server_name_is_verified_and_can_be_overridden(pki: Pki) -> None:
    """The cert names only cbir-shard.test: dialling 127.0.0.1 fails the hostname check unless
    the client says which name to expect."""
    named = TlsConfig(pki.named_server.cert, pki.named_server.key)

    async def scenario() -> None:
        async with running_server(named) as (address, _):
            plain = TlsConfig(ca_file=pki.ca)
            async with secure_or_insecure_channel(address, plain) as channel:
                assert await code_of(stats(channel)) == grpc.StatusCode.UNAVAILABLE
            override = TlsConfig(ca_file=pki.ca, server_name_override="cbir-shard.test")
            async with secure_or_insecure_channel(address, override) as channel:
                assert (await stats(channel)).count == 42

    asyncio.run(scenario())


def test_mutual_tls_accepts_a_client_cert_from_the_right_ca(pki: Pki) -> None:
    client = TlsConfig(pki.client.cert, pki.client.key, pki.ca)

    async def scenario() -> None:
        async with (
            running_server(server_tls(pki, mutual=True)) as (address, shard),
            secure_or_insecure_channel(address, client) as channel,
        ):
            assert (await stats(channel)).count == 42
        assert shard.calls == ["Stats"]

    asyncio.run(scenario())


@pytest.mark.parametrize("which", ["no client cert", "client cert from another CA"])
def test_mutual_tls_refuses_missing_or_foreign_client_certs(pki: Pki, which: str) -> None:
    if which == "no client cert":
        client = TlsConfig(ca_file=pki.ca)
    else:
        client = TlsConfig(pki.other_client.cert, pki.other_client.key, pki.ca)

    async def scenario() -> None:
        async with (
            running_server(server_tls(pki, mutual=True)) as (address, shard),
            secure_or_insecure_channel(address, client) as channel,
        ):
            assert await code_of(stats(channel)) == grpc.StatusCode.UNAVAILABLE
            probe = health_pb2_grpc.HealthStub(channel)
            check = probe.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert await code_of(check) == grpc.StatusCode.UNAVAILABLE
        assert shard.calls == []

    asyncio.run(scenario())


def test_sync_channel_for_clients(pki: Pki) -> None:
    """The synchronous variant (cbir query, the Python client) against a TLS server."""

    async def scenario() -> None:
        async with running_server(server_tls(pki, mutual=True)) as (address, _):
            client = TlsConfig(pki.client.cert, pki.client.key, pki.ca)

            def call() -> int:
                with secure_or_insecure_sync_channel(address, client) as channel:
                    stub = cbir_pb2_grpc.ShardStub(channel)
                    return int(stub.Stats(cbir_pb2.StatsRequest(), timeout=5).count)

            assert await asyncio.to_thread(call) == 42
            # The plaintext health helper cannot reach it: TLS is really on.
            assert not await asyncio.to_thread(health.check, address)

    asyncio.run(scenario())


def test_rotated_server_certificate_is_served_to_new_connections(pki: Pki, tmp_path: Path) -> None:
    """Files replaced in place (what a Kubernetes Secret update does) are picked up without a
    restart: new connections see the new certificate."""
    new_ca = make_ca(tmp_path / "new", "rotated")
    new_leaf = issue(new_ca, tmp_path / "new", "server2", ["localhost"], ["127.0.0.1"], True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    live = TlsConfig(cert, key)
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)

    async def scenario() -> None:
        async with running_server(live) as (address, _):
            async with secure_or_insecure_channel(address, TlsConfig(ca_file=pki.ca)) as ch:
                assert (await stats(ch)).count == 42
            shutil.copy(new_leaf.cert, cert)
            shutil.copy(new_leaf.key, key)
            new_trust = TlsConfig(ca_file=new_ca.cert_path)
            async with secure_or_insecure_channel(address, new_trust) as ch:
                assert (await stats(ch)).count == 42
            async with secure_or_insecure_channel(address, TlsConfig(ca_file=pki.ca)) as ch:
                assert await code_of(stats(ch)) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())
