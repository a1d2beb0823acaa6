"""``cbir serve-web`` as a real process: TLS and bearer tokens (the same flags and token files
as the gRPC servers), the announced URL, and one-line exit-2 errors for bad options."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cbir.ids import image_id
from tests.rpc.pki import Pki, make_pki
from tests.web.system import System

pytestmark = pytest.mark.slow
TOKEN = "web-test-token-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[2]


def _serve_web(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cbir.cli", "serve-web", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("web-pki"))


@pytest.fixture
def secure_web(system: System, pki: Pki, tmp_path: Path) -> Iterator[str]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# web callers\n{TOKEN}\n")
    proc = _serve_web("--coordinator", system.coordinator, "--port", "0",
                      "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                      "--auth-token-file", str(tokens))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on https://127.0.0.1:"), proc.communicate()[1]
        yield line.split()[-1].rstrip("/")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        # uvicorn drains, then re-raises SIGTERM so the exit status says how it ended.
        assert proc.returncode in (0, -15), err
        assert "Traceback" not in err and TOKEN not in err


def test_tls_and_bearer_token(secure_web: str, system: System, pki: Pki) -> None:
    with httpx.Client(verify=str(pki.ca), timeout=60) as http:
        assert http.get(f"{secure_web}/healthz").status_code == 200  # probes need no token
        refused = http.get(f"{secure_web}/api/info")
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = http.get(f"{secure_web}/api/info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get(f"{secure_web}/api/info", headers=auth).json()["num_shards"] == 2
        wanted = image_id(system.keys["coins"])
        hits = http.post(f"{secure_web}/api/search", headers=auth,
                         json={"image_id": str(wanted), "k": 1}).json()["hits"]
        assert hits[0]["image_id_str"] == str(wanted)
        thumb = http.get(f"{secure_web}{hits[0]['thumbnail_url']}", headers=auth)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert http.get(f"{secure_web}{hits[0]['thumbnail_url']}").status_code == 401
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
        httpx.get(f"{secure_web}/healthz", verify=str(pki.other_ca))


@pytest.mark.parametrize(("argv", "message"), [
    (["--coordinator", "nohost"], "HOST:PORT"),
    (["--coordinator", "127.0.0.1:1", "--port", "70000"], "--port"),
    (["--coordinator", "127.0.0.1:1", "--tls-cert", "/nonexistent.crt", "--tls-key", "/x"],
     "not found"),
    (["--coordinator", "127.0.0.1:1", "--host", "192.0.2.1"], "cannot listen"),
])
def test_bad_options_exit_2_with_one_line(argv: list[str], message: str) -> None:
    proc = _serve_web(*argv)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir serve-web: error:") and message in err


def test_the_listening_socket_lets_asyncio_turn_nagle_off() -> None:
    """asyncio sets TCP_NODELAY on accepted sockets only when the listening socket says
    IPPROTO_TCP; with proto 0 every kept-alive request waited ~40 ms for a delayed ACK."""
    import asyncio
    import socket

    from web.cli import bind

    async def accepted_nodelay() -> int:
        sock = bind("127.0.0.1", 0)
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = writer.get_extra_info("socket")
            seen.append(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return seen[0]

    assert asyncio.run(accepted_nodelay()) != 0


def test_options_come_from_cbir_environment_variables_too(system: System) -> None:
    """CBIR_<FLAG> works like the flag (Kubernetes can set either); a flag beats it."""
    import os

    env = {**os.environ, "CBIR_COORDINATOR": system.coordinator, "CBIR_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "cbir.cli", "serve-web"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        assert httpx.get(f"{url}api/info", timeout=60).json()["num_shards"] == 2
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    bad = subprocess.run([sys.executable, "-m", "cbir.cli", "serve-web"], cwd=ROOT,
                         env={**env, "CBIR_PORT": "http"}, capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "CBIR_PORT='http'" in bad.stderr
