"""A fault-injecting S3 endpoint: a real HTTP proxy on 127.0.0.1 in front of the moto server.

Point ``AWS_ENDPOINT_URL`` at ``proxy.url``. For a seeded fraction of requests it answers
503 SlowDown, 500 InternalError or 429 (throttling), resets the connection before answering,
or forwards the request and then cuts the response body halfway (the object was read / the
write happened, the client never learns it). Keys listed in ``permanent`` always get a fixed
error (e.g. 403 AccessDenied, 404 NoSuchKey) without reaching moto. Counters say what was done.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

FAULTS = ("slowdown", "internal", "throttle", "reset", "cut")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()


_CANNED = {
    "slowdown": (503, error_xml("SlowDown", "Please reduce your request rate.")),
    "internal": (500, error_xml("InternalError", "We encountered an internal error.")),
    "throttle": (429, error_xml("TooManyRequests", "Too many requests.")),
}


@dataclass
class FaultPlan:
    rate: float = 0.0  # fraction of requests faulted (0 = a plain proxy)
    seed: int = 0
    kinds: tuple[str, ...] = FAULTS
    permanent: dict[str, tuple[int, str]] = field(default_factory=dict)  # "bucket/key" -> error
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        # SO_LINGER 0: close sends an RST, the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes,
              cut: bool = False) -> None:
        self.send_response_only(status)
        head = self.command == "HEAD"  # keep the object's size: a HEAD carries no body
        for name, value in headers:
            if name.lower() not in _HOP and (head or name.lower() != "content-length"):
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.wfile.flush()
            self._reset()

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers.pop("Content-Length", None)
        conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port,
                                          timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._body()
        plan = self.server.plan
        target = unquote(urlparse(self.path).path).lstrip("/")
        if target in plan.permanent:
            status, code = plan.permanent[target]
            with plan._lock:
                plan.counts[f"permanent_{code}"] += 1
            self._send(status, [("Content-Type", "application/xml")], error_xml(code, code))
            return
        fault = plan.draw()
        if fault == "reset":
            self._reset()
            return
        if fault in _CANNED:
            status, xml = _CANNED[fault]
            self._send(status, [("Content-Type", "application/xml")], xml)
            return
        status, headers, data = self._forward(body)
        # Cutting an empty body is a reset after the headers: still a broken response.
        self._send(status, headers, data, cut=fault == "cut")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parsed = urlparse(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.plan = plan


class FaultyS3:
    """``with FaultyS3(moto_url, FaultPlan(rate=0.15, seed=1)) as proxy: proxy.url``."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        self.plan = plan
        self._server = _ProxyServer(upstream, plan)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faulty-s3")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
