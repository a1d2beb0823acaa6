"""``cbir serve-web``: the HTTP/JSON API and the page, on a coordinator's client API."""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
from typing import Any

from cbir.errors import InvalidArgument
from cbir.rpc.security import (
    ServerSecurity,
    add_security_arguments,
    client_security_from_args,
    server_security_from_args,
)
from web.config import DEFAULT_K, WebConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                        help="the coordinator's gRPC address")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve HTTP on")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds per coordinator call")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="hits when a query sets none")
    parser.add_argument("--thumbnail-px", type=int, default=256,
                        help="longest side of thumbnails")
    parser.add_argument("--thumbnail-cache-mb", type=float, default=64.0,
                        help="memory for cached thumbnails (least recently used go first)")
    add_security_arguments(parser, server=True)
    add_security_arguments(parser, server=False, prefix="coordinator-")


def build_config(args: argparse.Namespace) -> WebConfig:
    if ":" not in args.coordinator:
        raise InvalidArgument(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")
    if not 0 <= args.port <= 65535:
        raise InvalidArgument(f"--port must be 0..65535, got {args.port}")
    if args.timeout <= 0 or args.k <= 0 or args.thumbnail_px <= 0:
        raise InvalidArgument("--timeout, --k and --thumbnail-px must be positive")
    if args.thumbnail_cache_mb < 0:
        raise InvalidArgument("--thumbnail-cache-mb must be >= 0")
    return WebConfig(
        coordinator=args.coordinator, host=args.host, port=args.port, timeout_s=args.timeout,
        default_k=args.k, thumb_px=args.thumbnail_px,
        thumb_cache_bytes=int(args.thumbnail_cache_mb * 1024 * 1024),
        security=server_security_from_args(args),
        coordinator_security=client_security_from_args(args, prefix="coordinator-"),
    )


def ssl_options(security: ServerSecurity) -> dict[str, Any]:
    """uvicorn's TLS settings for the same --tls-* flags the gRPC servers take."""
    tls = security.tls
    if tls is None:
        return {}
    return {
        "ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file),
        "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE,
    }


def bind(host: str, port: int) -> socket.socket:
    """Bound before uvicorn starts, so ``--port 0`` can be announced with the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when it
    # sees that proto; without it Nagle + delayed ACKs add ~40 ms to every kept-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # connections made before uvicorn runs wait in the backlog
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    config = build_config(args)
    sock = bind(config.host, config.port)
    scheme = "https" if config.security.tls else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    # One line on stdout that scripts (the demo, tests) read; everything else is logging.
    print(f"listening on {scheme}://{host}:{sock.getsockname()[1]}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=5, **ssl_options(config.security)))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


