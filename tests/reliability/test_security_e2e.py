"""End to end security: real ``cbir serve-shard`` processes serving TLS and requiring client
certificates (mutual TLS) and bearer tokens; an in-process coordinator dialling them with its
client certificate and token, serving TLS itself and requiring a bearer token from callers.
Right credentials answer; missing or wrong ones are refused with the right code; no token text
reaches a log or an error. Also: the request id travels coordinator -> shard logs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.rpc.auth import AuthConfig, Secret
from cbir.rpc.security import (
    ClientSecurity,
    ServerSecurity,
    TlsConfig,
    secure_or_insecure_sync_channel,
)
from protos import cbir_pb2, cbir_pb2_grpc
from tests.reliability.cluster import SHARDS, Coordinator, ShardProcess, Version
from tests.rpc.pki import Pki, make_pki

CALLER_TOKEN = "caller-token-7d1e5a93c0b24f68"
COORDINATOR_TOKEN = "coordinator-token-2b9e61f0a4c87d35"  # search role on the shards
OPERATOR_TOKEN = "operator-token-c4f0e2b7a9d13865"  # admin role on the shards
WRONG_TOKEN = "wrong-token-00112233445566778899"
ALL_TOKENS = (CALLER_TOKEN, COORDINATOR_TOKEN, OPERATOR_TOKEN, WRONG_TOKEN)


@dataclass
class SecureCluster:
    pki: Pki
    shards: list[ShardProcess]
    coordinator: Coordinator

    def shard_channel(self, shard: int, client: bool = True, token: str | None = None,
                      ca: Path | None = None) -> grpc.Channel:
        cert = self.pki.client if client else None
        tls = TlsConfig(ca_file=ca or self.pki.ca, cert_file=cert.cert if cert else None,
                        key_file=cert.key if cert else None)
        return secure_or_insecure_sync_channel(self.shards[shard].address, tls,
                                               token=Secret(token) if token else None)

    def coordinator_channel(self, token: str | None) -> grpc.Channel:
        return secure_or_insecure_sync_channel(
            f"127.0.0.1:{self.coordinator.port}", TlsConfig(ca_file=self.pki.ca),
            token=Secret(token) if token else None)


@pytest.fixture(scope="module")
def cluster(glove_v1: Version, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[SecureCluster]:
    tmp = tmp_path_factory.mktemp("secure")
    pki = make_pki(tmp / "pki")
    shard_tokens = tmp / "shard-tokens"
    shard_tokens.write_text(f"{COORDINATOR_TOKEN}\n{OPERATOR_TOKEN} admin\n")
    caller_tokens = tmp / "caller-tokens"
    caller_tokens.write_text(f"{CALLER_TOKEN}\n")
    tls_args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                "--tls-ca", str(pki.ca), "--tls-require-client-cert",
                "--auth-token-file", str(shard_tokens)]
    shards = [ShardProcess(s, ["--index", glove_v1.root], tmp, tls_args).start()
              for s in range(SHARDS)]
    client_tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client.cert, key_file=pki.client.key)
    for shard in shards:
        shard.wait_serving(channel_factory=lambda a: secure_or_insecure_sync_channel(a, client_tls))
    coordinator = Coordinator(
        [[s] for s in shards],
        security=ServerSecurity(TlsConfig(cert_file=pki.server.cert, key_file=pki.server.key),
                                AuthConfig.from_file(caller_tokens)),
        shard_security=ClientSecurity(client_tls, Secret(COORDINATOR_TOKEN)),
    )
    try:
        yield SecureCluster(pki, shards, coordinator)
    finally:
        coordinator.close()
        for shard in shards:
            shard.stop()


def search(channel: grpc.Channel, vector: np.ndarray,
           request_id: str = "") -> cbir_pb2.SearchResponse:
    stub = cbir_pb2_grpc.CoordinatorStub(channel)
    request = cbir_pb2.SearchRequest(vector=cbir_pb2.FloatVector(values=vector.tolist()), k=5,
                                     request_id=request_id)
    return stub.Search(request, timeout=10)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_right_credentials_answer_and_request_id_reaches_the_shards(
    cluster: SecureCluster, glove_v1: Version, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.access")
    with cluster.coordinator_channel(CALLER_TOKEN) as channel:
        reply = search(channel, glove_v1.vectors[7], request_id="e2e-req-0042")
    assert not reply.partial
    assert [h.image_id for h in reply.hits] == glove_v1.top_k(glove_v1.vectors[7], 5)
    assert reply.request_id == "e2e-req-0042"
    assert "request_id=e2e-req-0042" in caplog.text
    for shard in cluster.shards:  # the same id in each shard's access log line
        assert "method=Search code=OK request_id=e2e-req-0042" in shard.logs()


def test_coordinator_refuses_missing_or_wrong_token(cluster: SecureCluster,
                                                    glove_v1: Version) -> None:
    query = glove_v1.vectors[3]
    for token in (None, WRONG_TOKEN):
        with cluster.coordinator_channel(token) as channel:
            error = refused(lambda: search(channel, query))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, token
    # a shard's token is not a caller's token
    with cluster.coordinator_channel(COORDINATOR_TOKEN) as channel:
        assert refused(lambda: search(channel, query)).code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(f"127.0.0.1:{cluster.coordinator.port}") as channel:
        assert refused(lambda: search(channel, query)).code() == grpc.StatusCode.UNAVAILABLE


def stats(channel: grpc.Channel) -> cbir_pb2.StatsResponse:
    return cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5)


def load_index(channel: grpc.Channel, root: str) -> cbir_pb2.LoadIndexResponse:
    return cbir_pb2_grpc.ShardStub(channel).LoadIndex(cbir_pb2.LoadIndexRequest(index_uri=root),
                                                      timeout=30)


def test_shards_need_client_certificate_and_token(cluster: SecureCluster,
                                                  glove_v1: Version) -> None:
    with cluster.shard_channel(0, token=COORDINATOR_TOKEN) as channel:
        assert stats(channel).count > 0
    # no client certificate / one from another CA / plaintext: the handshake fails
    with cluster.shard_channel(0, client=False, token=COORDINATOR_TOKEN) as channel:
        assert refused(lambda: stats(channel)).code() == grpc.StatusCode.UNAVAILABLE
    intruder = TlsConfig(ca_file=cluster.pki.ca, cert_file=cluster.pki.other_client.cert,
                         key_file=cluster.pki.other_client.key)
    with secure_or_insecure_sync_channel(cluster.shards[0].address, intruder,
                                         token=Secret(COORDINATOR_TOKEN)) as channel:
        assert refused(lambda: stats(channel)).code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(cluster.shards[0].address) as channel:
        assert refused(lambda: stats(channel)).code() == grpc.StatusCode.UNAVAILABLE
    # right certificate, missing / wrong token
    for token in (None, WRONG_TOKEN):
        with cluster.shard_channel(0, token=token) as channel:
            code = refused(lambda: stats(channel)).code()
            assert code == grpc.StatusCode.UNAUTHENTICATED
    # the coordinator's (search) token may not swap indexes; the operator's may
    with cluster.shard_channel(1, token=COORDINATOR_TOKEN) as channel:
        error = refused(lambda: load_index(channel, glove_v1.root))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    with cluster.shard_channel(1, token=OPERATOR_TOKEN) as channel:
        assert load_index(channel, glove_v1.root).index_version == glove_v1.version
    assert not any(t in (error.details() or "") for t in ALL_TOKENS)


def test_no_token_in_any_log(cluster: SecureCluster, glove_v1: Version,
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (CALLER_TOKEN, WRONG_TOKEN, None):
        with cluster.coordinator_channel(token) as channel:
            try:
                search(channel, glove_v1.vectors[1])
            except grpc.RpcError as exc:
                assert not any(t in (exc.details() or "") for t in ALL_TOKENS)
    text = caplog.text + "".join(shard.logs() for shard in cluster.shards)
    assert "refused" in text  # the refusals were logged...
    for token in ALL_TOKENS:  # ...without the tokens
        assert token not in text


def test_mtls_without_tokens_still_refuses_load_index(cluster: SecureCluster, glove_v1: Version,
                                                     tmp_path: Path) -> None:
    """The prod overlay's setup (mutual TLS, no tokens): a client holding a valid certificate -
    like the coordinator's - may search but not swap the index; the loopback admin port may."""
    pki = cluster.pki
    tls_args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                "--tls-ca", str(pki.ca), "--tls-require-client-cert", "--admin-port", "0"]
    shard = ShardProcess(0, ["--index", glove_v1.root], tmp_path, tls_args).start()
    client_tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client.cert, key_file=pki.client.key)
    try:
        assert shard.proc is not None and shard.proc.stdout is not None
        admin = shard.proc.stdout.readline().strip().rsplit(" ", 1)[1]  # "admin listening on"
        shard.wait_serving(channel_factory=lambda a: secure_or_insecure_sync_channel(a, client_tls))
        with secure_or_insecure_sync_channel(shard.address, client_tls) as channel:
            assert stats(channel).count > 0
            error = refused(lambda: load_index(channel, glove_v1.root))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--admin-port" in (error.details() or "")
        with grpc.insecure_channel(admin) as channel:
            assert load_index(channel, glove_v1.root).index_version == glove_v1.version
    finally:
        shard.stop()
    assert "refused /cbir.v1.Shard/LoadIndex" in shard.logs()
