"""``cbir serve-web``: the HTTP/JSON API and the page, on a coordinator's client API."""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
from typing import Any

from cbir.errors import InvalidArgument
from cbir.options import add_options, build
from cbir.rpc.security import (
    ServerSecurity,
    add_security_arguments,
    client_security_from_args,
    server_security_from_args,
)
from web.config import WebConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, WebConfig)
    add_security_arguments(parser, server=True)
    add_security_arguments(parser, server=False, prefix="coordinator-")


def build_config(args: argparse.Namespace) -> WebConfig:
    config: WebConfig = build(WebConfig, args, {
        "security": server_security_from_args(args),
        "coordinator_security": client_security_from_args(args, prefix="coordinator-"),
    })
    if ":" not in config.coordinator:
        raise InvalidArgument(f"--coordinator must be HOST:PORT, got {config.coordinator!r}")
    if config.port > 65535:
        raise InvalidArgument(f"--port must be 0..65535, got {config.port}")
    return config


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


