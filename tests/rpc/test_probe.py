"""The TLS-capable exec probe against a real mutual-TLS server."""

from __future__ import annotations

import asyncio

from cbir.rpc import probe
from cbir.rpc.security import TlsConfig
from tests.rpc.conftest import running_server
from tests.rpc.pki import Pki


def test_probe_passes_with_the_pod_credentials_and_fails_without(pki: Pki) -> None:
    server = TlsConfig(pki.server.cert, pki.server.key, pki.ca, require_client_cert=True)
    mutual = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert)]
    mutual += ["--tls-key", str(pki.client.key)]

    async def scenario() -> list[int]:
        async with running_server(server) as (address, _):
            runs = [
                [address, *mutual],
                [address, *mutual, "--service", "cbir.v1.Shard"],
                [address, *mutual, "--service", "no.such.Service"],
                [address, "--tls-ca", str(pki.ca)],  # no client certificate
                [address],  # plaintext
                [address, "--tls-ca", "/nonexistent/ca.crt"],
            ]
            return [await asyncio.to_thread(probe.main, argv) for argv in runs]

    assert asyncio.run(scenario()) == [0, 0, 1, 1, 1, 2]
