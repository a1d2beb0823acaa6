"""`cbir query` against real gRPC servers when something is wrong: each mistake is one line on
stderr, exit 2, and says what to do (shard down, TLS mismatch in both directions, no server).
Also: JSON output carries every image id as a string too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbir.cli import main
from cbir.rpc.security import ServerSecurity, TlsConfig
from demo.processes import free_port
from tests.client.test_query_cli import ROOT
from tests.coordinator.harness import Cluster, LoopThread, start_cluster
from tests.rpc.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def tls_cluster(loop: LoopThread, pki: Pki) -> Iterator[Cluster]:
    cluster = start_cluster(loop, security=ServerSecurity(
        tls=TlsConfig(pki.server.cert, pki.server.key)))
    yield cluster
    cluster.close()


def cbir_query(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CBIR_", "GRPC_"))}
    return subprocess.run([sys.executable, "-m", "cbir.cli", "query", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no gRPC core log lines, no traceback
    return lines[0]


def test_plaintext_client_against_tls_server_is_told_to_use_tls(tls_cluster: Cluster,
                                                                pki: Pki) -> None:
    line = one_line(cbir_query("--coordinator", tls_cluster.address, "--image-id", "1"))
    assert line.startswith("cbir query: error: ")
    assert "may require TLS" in line and "--tls-ca" in line and "Socket closed" in line
    # With the CA the same query reaches the server (an unknown id is its answer).
    done = cbir_query("--coordinator", f"localhost:{tls_cluster.coordinator.port}",
                      "--image-id", "1", "--tls-ca", str(pki.ca))
    assert "unknown image id 1" in one_line(done)


def test_tls_client_against_plaintext_server_names_the_handshake(loop: LoopThread,
                                                                 pki: Pki) -> None:
    cluster = start_cluster(loop)
    try:
        done = cbir_query("--coordinator", cluster.address, "--image-id", "1",
                          "--tls-ca", str(pki.ca))
    finally:
        cluster.close()
    line = one_line(done)
    assert "TLS handshake with" in line and "may not use TLS" in line


def test_query_by_id_whose_shard_is_down_names_the_shard(
        loop: LoopThread, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = start_cluster(loop, num_shards=2, replicas=1)
    image_id = int(cluster.data.ids[0])
    shard = image_id % 2
    try:
        cluster.stop_replica(shard, 0)
        code = main(["query", "--coordinator", cluster.address, "--image-id", str(image_id)])
    finally:
        cluster.close()
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"shard {shard}, which holds image id {image_id}, is unavailable" in err
    assert "cannot reach the coordinator" not in err


def test_no_server_says_the_coordinator_cannot_be_reached() -> None:
    address = f"127.0.0.1:{free_port()}"
    line = one_line(cbir_query("--coordinator", address, "--image-id", "1", "--timeout", "3"))
    assert f"cannot reach the coordinator at {address}" in line


@pytest.mark.parametrize("argv", [["--k", "0"], ["--timeout", "-1"], ["--nprobe", "-2"]])
def test_bad_numbers_are_refused_by_the_parser(argv: list[str]) -> None:
    line = one_line(cbir_query("--coordinator", "127.0.0.1:1", "--image-id", "1", *argv))
    assert f"argument {argv[0]}" in line and ": must be" in line


def test_json_carries_image_ids_as_strings(tls_cluster: Cluster, pki: Pki,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    big = max(int(i) for i in tls_cluster.data.ids)
    assert big > 2**53  # the ids JavaScript/jq would round
    code = main(["query", "--coordinator", f"localhost:{tls_cluster.coordinator.port}",
                 "--tls-ca", str(pki.ca), "--image-id", str(big), "--k", "3", "--json"])
    assert code == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["image_id_str"] == str(big)
    assert all(h["image_id_str"] == str(h["image_id"]) for h in hits)


def test_query_help_shows_defaults(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBIR_K", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["query", "-h"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "number of hits (env CBIR_K) (default: 10)" in text
    assert Path(ROOT).is_dir()
