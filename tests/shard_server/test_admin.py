"""The locked admin surface through real shard servers (issue 16.2, 16.3): LoadIndex is refused
on the public port without an admin credential, served on the loopback admin port, bounded to
the allowed index roots; it never echoes the content of what it was pointed at; a replica that
follows a pointer refuses manual loads and shows drift in Stats and metrics; the metrics port
binds --host. Every refusal leaves the server SERVING the same version."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir import storage
from cbir.errors import PermissionDenied
from cbir.rpc.auth import AuthConfig, bearer_metadata
from cbir.rpc.security import ServerSecurity
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.pointer import write_pointer
from shard_server.server import ThreadedServer, serve_in_thread
from tests.build_index import fixtures as fx
from tests.conftest import free_port
from tests.shard_server.conftest import DIM, BuiltIndex, config, with_admin

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-db-password-0xC0FFEE"
ADMIN_TOKEN = "admin-token-9a8b7c6d5e4f3a2b1c"
WRITE_TOKEN = "write-token-1f2e3d4c5b6a7988"
SEARCH_TOKEN = "search-token-5f0c2a9d8e7b6a1c"


def load(channel: grpc.Channel, uri: str, token: str | None = None) -> cbir_pb2.LoadIndexResponse:
    metadata = bearer_metadata(token) if token else None
    return cbir_pb2_grpc.ShardStub(channel).LoadIndex(
        cbir_pb2.LoadIndexRequest(index_uri=uri), timeout=30, metadata=metadata)


def refused(channel: grpc.Channel, uri: str, token: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        load(channel, uri, token)
    return info.value


def stats(channel: grpc.Channel, token: str | None = None) -> cbir_pb2.StatsResponse:
    metadata = bearer_metadata(token) if token else None
    return cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5,
                                                  metadata=metadata)


def serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def channels(server: ThreadedServer) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    """(public port, admin port) of the shared test server."""
    assert server.server is not None
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as public, \
            grpc.insecure_channel(f"127.0.0.1:{server.server.admin_port}") as admin:
        yield public, admin


def test_load_index_needs_an_admin_credential_by_default(
    flat_index: BuiltIndex, flat_index_v2: BuiltIndex,
    channels: tuple[grpc.Channel, grpc.Channel],
) -> None:
    public, admin = channels
    error = refused(public, flat_index_v2.root)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--admin-port" in (error.details() or "")
    assert stats(public).index_version == flat_index.version and serving(public)
    # the loopback admin port serves it, and the public port then answers with the new version
    assert load(admin, flat_index_v2.root).index_version == flat_index_v2.version
    assert stats(public).index_version == flat_index_v2.version


def test_admin_port_listens_on_loopback_only(server: ThreadedServer) -> None:
    assert server.server is not None and server.server.admin_port > 0
    with socket.create_connection(("127.0.0.1", server.server.admin_port), timeout=5):
        pass
    with pytest.raises(OSError):  # another loopback address reaches a 0.0.0.0 socket, not this
        socket.create_connection(("127.0.0.2", server.server.admin_port), timeout=5).close()


@pytest.mark.parametrize(("uri", "code", "says"), [
    ("/etc", grpc.StatusCode.PERMISSION_DENIED, "outside the allowed index root"),
    ("s3://data/secret/config.json#", grpc.StatusCode.INVALID_ARGUMENT, "'?', '#'"),
    ("s3://data/indexes/v1?versionId=3", grpc.StatusCode.INVALID_ARGUMENT, "'?', '#'"),
    ("ROOT/../../etc", grpc.StatusCode.INVALID_ARGUMENT, "'..' path segment"),
    ("ROOT/v1\r\x1b[2J", grpc.StatusCode.INVALID_ARGUMENT, "control characters"),
    ("file:///etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "only s3:// URIs"),
    ("x" * 5000, grpc.StatusCode.INVALID_ARGUMENT, "1..1024 characters"),
])
def test_index_uris_are_bounded_to_the_allowed_roots(
    flat_index: BuiltIndex, channels: tuple[grpc.Channel, grpc.Channel],
    tmp_path_factory: pytest.TempPathFactory, uri: str, code: grpc.StatusCode, says: str,
) -> None:
    _, admin = channels
    error = refused(admin, uri.replace("ROOT", str(tmp_path_factory.getbasetemp())))
    assert error.code() == code
    details = error.details() or ""
    assert says in details and "\x1b" not in details and "\r" not in details
    assert len(details) < 800  # a 5000-character URI is not echoed back whole
    assert stats(admin).index_version == flat_index.version and serving(admin)


def _copy_index(src: str, dst: str) -> None:
    for name in storage.list_names(src):
        storage.write_bytes(storage.join(dst, name), storage.read_bytes(storage.join(src, name)))


def test_load_index_never_echoes_what_it_read(flat_index: BuiltIndex, bucket: str) -> None:
    """The reported attack: LoadIndex(s3://data/secret/config.json#) read the object and put
    part of it (a password) in the error. Now '#' is refused, the secret folder is outside the
    root, and even an allowed root holding a non-manifest gets an error without its content."""
    secret = json.dumps({"db": {"user": "dbuser-7731", "password": PASSWORD}}).encode()
    storage.write_bytes(f"s3://{bucket}/secret/config.json", secret)
    storage.write_bytes(f"s3://{bucket}/secret/shard=000/manifest.json", secret)
    storage.write_bytes(f"s3://{bucket}/indexes/junk/shard=000/manifest.json", secret)
    root = f"s3://{bucket}/indexes/v1"
    _copy_index(flat_index.root, root)
    cfg = dataclasses.replace(config(root), admin_port=0)  # default root: s3://bucket/indexes
    with serve_in_thread(cfg) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.server.admin_port}") as admin:  # type: ignore[union-attr]
        errors = [refused(admin, f"s3://{bucket}/secret/config.json#"),
                  refused(admin, f"s3://{bucket}/secret"),
                  refused(admin, f"s3://{bucket}/indexes/junk")]
        assert [e.code() for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT,
                                              grpc.StatusCode.PERMISSION_DENIED,
                                              grpc.StatusCode.FAILED_PRECONDITION]
        assert "invalid manifest" in (errors[2].details() or "")
        for error in errors:
            assert PASSWORD not in (error.details() or "")
            assert "dbuser-7731" not in (error.details() or "")
        assert stats(admin).index_version == flat_index.version and serving(admin)


def test_tokens_guard_both_ports_and_write_is_not_admin(
    flat_index: BuiltIndex, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{SEARCH_TOKEN}\n{WRITE_TOKEN} write\n{ADMIN_TOKEN} admin\n")
    cfg = dataclasses.replace(
        with_admin(config(flat_index.root), str(tmp_path_factory.getbasetemp())),
        security=ServerSecurity(auth=AuthConfig.from_file(tokens)))
    with serve_in_thread(cfg) as server:
        assert server.server is not None
        for port in (server.port, server.server.admin_port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert refused(channel, flat_index.root).code() == \
                    grpc.StatusCode.UNAUTHENTICATED
                for token in (SEARCH_TOKEN, WRITE_TOKEN):
                    error = refused(channel, flat_index.root, token)
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "lacks the 'admin' role" in (error.details() or "")
                assert load(channel, flat_index.root, ADMIN_TOKEN).swapped
                # write does not imply search (a writer's token is not a reader's)
                with pytest.raises(grpc.RpcError) as info:
                    stats(channel, WRITE_TOKEN)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert stats(channel, SEARCH_TOKEN).count > 0
                assert stats(channel, ADMIN_TOKEN).count > 0


def _metric(server: ThreadedServer, name: str, labels: dict[str, str] | None = None) -> float:
    assert server.server is not None
    value = server.server.metrics.registry.get_sample_value(name, labels or {})
    return -1.0 if value is None else value


def test_pointer_is_authoritative_and_drift_is_visible(
    flat_index: BuiltIndex, flat_index_v2: BuiltIndex, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pointer = str(tmp_path / "CURRENT")
    write_pointer(pointer, flat_index.root)
    base = str(tmp_path_factory.getbasetemp())
    broken = tmp_path / "broken"  # a committed-looking index that is not one for this shard
    _copy_index(flat_index_v2.root, str(broken))
    (broken / "shard=000" / "index.faiss").write_bytes(b"not a faiss index")
    cfg = dataclasses.replace(with_admin(config(""), base), index_pointer=pointer,
                              pointer_interval_s=3600.0)  # polled by hand below
    with serve_in_thread(cfg) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.server.admin_port}") as admin:  # type: ignore[union-attr]
        shard = server.server
        assert shard is not None

        def poll() -> None:
            server.call(shard.check_pointer(pointer))

        error = refused(admin, flat_index_v2.root)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "follows the index pointer" in (error.details() or "")
        now = stats(admin)
        assert (now.index_uri, now.index_pointer, now.pointer_target) == (
            flat_index.root, pointer, flat_index.root)
        assert _metric(server, "cbir_shard_index_pointer_drift") == 0

        write_pointer(pointer, str(broken))
        poll()  # refused: keeps serving v1, and says the pointer names something else
        now = stats(admin)
        assert (now.index_version, now.index_uri, now.pointer_target) == (
            flat_index.version, flat_index.root, str(broken))
        assert _metric(server, "cbir_shard_index_pointer_drift") == 1
        assert _metric(server, "cbir_shard_index_pointer_target_info",
                       {"target": str(broken)}) == 1

        write_pointer(pointer, flat_index_v2.root + "/")  # spelled differently: one load
        poll()
        poll()
        assert _metric(server, "cbir_shard_index_loads_total",
                       {"source": "pointer", "result": "ok"}) == 1
        now = stats(admin)
        assert (now.index_version, now.index_uri, now.pointer_target) == (
            flat_index_v2.version, flat_index_v2.root, flat_index_v2.root)
        assert _metric(server, "cbir_shard_index_pointer_drift") == 0
        assert _metric(server, "cbir_shard_index_uri_info",
                       {"index_uri": flat_index_v2.root}) == 1


def test_pointer_target_outside_the_root_is_refused(
    flat_index: BuiltIndex, flat_index_v2: BuiltIndex, tmp_path: Path,
) -> None:
    """Default root = the pointer's folder: a target elsewhere is refused and keeps v1."""
    pointer = str(Path(flat_index.root).parent / "CURRENT-outside-test")
    write_pointer(pointer, flat_index.root)
    cfg = dataclasses.replace(config(""), index_pointer=pointer, pointer_interval_s=3600.0)
    with serve_in_thread(cfg) as server:
        assert server.server is not None
        write_pointer(pointer, flat_index_v2.root)  # another tmp folder: outside
        server.call(server.server.check_pointer(pointer))
        assert server.server.searcher.store.current().version == flat_index.version
        assert _metric(server, "cbir_shard_index_pointer_drift") == 1
        assert _metric(server, "cbir_shard_index_loads_total",
                       {"source": "pointer", "result": "refused"}) == 1
    Path(pointer).unlink()


def test_metrics_listen_on_the_server_host_only(flat_index: BuiltIndex) -> None:
    port = free_port()
    cfg = dataclasses.replace(config(flat_index.root), metrics_port=port, host="127.0.0.1")
    with serve_in_thread(cfg):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"cbir_shard_index_vectors" in resp.read()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()


def test_search_still_answers_on_the_public_port(
    flat_index: BuiltIndex, channels: tuple[grpc.Channel, grpc.Channel],
) -> None:
    """No tokens configured: searches stay open (role ``search`` needs no credential)."""
    public, _ = channels
    rows = flat_index.shard_rows(0)[:1]
    reply = cbir_pb2_grpc.ShardStub(public).Search(cbir_pb2.ShardSearchRequest(
        vectors=flat_index.vectors[rows].astype("<f4").tobytes(), dim=DIM, k=1), timeout=10)
    assert reply.index_version == flat_index.version
    assert stats(public).model_version == fx.MODEL_VERSION


def test_operator_load_index_command(flat_index: BuiltIndex, flat_index_v2: BuiltIndex,
                                     server: ThreadedServer) -> None:
    """``python -m shard_server.load_index`` (what an operator runs through kubectl exec): a
    real process against the admin port swaps; against the public port it is refused (exit 1)."""
    assert server.server is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(port: int, uri: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shard_server.load_index",
                               f"127.0.0.1:{port}", uri], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    public = run(server.port, flat_index_v2.root)
    assert public.returncode == 1 and "PERMISSION_DENIED" in public.stderr
    admin = run(server.server.admin_port, flat_index_v2.root)
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.startswith(f"serving {flat_index_v2.version}")
    assert server.server.searcher.store.current().version == flat_index_v2.version
    assert run(server.server.admin_port, "/etc").returncode == 1


def test_a_pointer_naming_an_index_outside_the_root_stops_the_start(
    flat_index: BuiltIndex, tmp_path: Path,
) -> None:
    pointer = tmp_path / "CURRENT"
    write_pointer(str(pointer), flat_index.root)  # flat_index lives in another temp folder
    cfg = dataclasses.replace(config(""), index_pointer=str(pointer))
    with pytest.raises(PermissionDenied, match="outside the allowed index root"):
        ThreadedServer(cfg).start()
