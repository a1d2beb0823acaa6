"""TLS / mutual TLS credentials, secure channels and the security CLI flags.

Certificates and keys are read from files (a Kubernetes ``kubernetes.io/tls`` Secret mounted as a
volume gives ``tls.crt``, ``tls.key`` and ``ca.crt``). A server re-reads them when their files
change (``reloading=True``, the default): gRPC asks for the certificate configuration before each
new TLS handshake, so a rotated Secret is picked up by new connections without a restart. Clients
read theirs when a channel is made; rotate by re-creating channels or rolling the pods.

Errors name files, never their contents; no key, certificate or token is ever logged.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cbir import errors
from cbir.rpc.auth import (
    AuthConfig,
    Secret,
    SyncTokenInterceptor,
    aio_token_interceptors,
    read_secret_file,
    token_call_credentials,
)
from cbir.rpc.ratelimit import FailureLimit

log = logging.getLogger(__name__)

Options = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class TlsConfig:
    """Server side: cert/key serve, ``ca_file`` verifies client certs (mTLS).
    Client side: ``ca_file`` verifies the server (None: system roots), cert/key are the client's
    certificate for mTLS. ``server_name_override`` checks the server cert against that name
    instead of the dialled host (tests, or dialling pod IPs)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    server_name_override: str | None = None

    def check_server(self) -> None:
        if self.cert_file is None or self.key_file is None:
            raise errors.InvalidArgument("a TLS server needs both --tls-cert and --tls-key")
        if self.require_client_cert and self.ca_file is None:
            raise errors.InvalidArgument("--tls-require-client-cert needs --tls-ca (the client CA)")
        _read_pem_files(self)

    def check_client(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise errors.InvalidArgument(
                "a TLS client certificate needs both --tls-cert and --tls-key"
            )
        _read_pem_files(self)


@dataclass(frozen=True)
class ServerSecurity:
    """What a server enforces: TLS (None: plaintext), bearer tokens (None: no token check) and
    the per-peer lockout after failed authentications."""

    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    failure_limit: FailureLimit = field(default_factory=FailureLimit)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client connects: TLS (None: plaintext) and the bearer token it sends (None: none)."""

    tls: TlsConfig | None = None
    token: Secret | None = None


_PEM_MARKERS = {"certificate": b"-----BEGIN CERTIFICATE-----", "private key": b"PRIVATE KEY-----"}


def _read_pem(path: Path, what: str) -> bytes:
    data = read_secret_file(path, f"TLS {what}")
    marker = _PEM_MARKERS["private key" if what == "key" else "certificate"]
    if marker not in data:
        kind = "private key" if what == "key" else "certificate"
        raise errors.InvalidArgument(f"TLS {what} file is not a PEM {kind}: {path}")
    return data


def _read_pem_files(tls: TlsConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(cert, key, ca) bytes, each None when not configured."""
    cert = _read_pem(tls.cert_file, "cert") if tls.cert_file else None
    key = _read_pem(tls.key_file, "key") if tls.key_file else None
    ca = _read_pem(tls.ca_file, "CA") if tls.ca_file else None
    return cert, key, ca


# ------------------------------------------------------------------ server side


def _certificate_configuration(tls: TlsConfig) -> Any:
    cert, key, ca = _read_pem_files(tls)
    assert cert is not None and key is not None  # check_server ran
    return grpc.ssl_server_certificate_configuration(
        [(key, cert)], ca if tls.require_client_cert else None
    )


def _mtimes(tls: TlsConfig) -> tuple[float, ...]:
    paths = [p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p is not None]
    try:
        return tuple(os.stat(p).st_mtime_ns for p in paths)
    except OSError:
        return ()


class _CertificateReloader:
    """gRPC calls this before every new handshake: a new configuration when the files changed
    (a rotated Kubernetes Secret), None to keep the current one. A half-written rotation that
    does not parse keeps the old certificate and logs the file name."""

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.seen = _mtimes(tls)

    def __call__(self) -> Any:
        now = _mtimes(self.tls)
        if not now or now == self.seen:
            return None
        try:
            config = _certificate_configuration(self.tls)
        except errors.CbirError as exc:
            log.warning("TLS files changed but cannot be used yet, keeping the old ones: %s", exc)
            return None
        self.seen = now
        log.info("TLS certificate files changed: serving the new certificate")
        return config


def server_credentials(tls: TlsConfig, reloading: bool = True) -> grpc.ServerCredentials:
    """Credentials for ``Serving.bind``; with ``require_client_cert`` clients must present a
    certificate signed by ``ca_file`` (mutual TLS)."""
    tls.check_server()
    if not reloading:
        cert, key, ca = _read_pem_files(tls)
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=ca if tls.require_client_cert else None,
            require_client_auth=tls.require_client_cert,
        )
    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(tls),
        _CertificateReloader(tls),
        require_client_authentication=tls.require_client_cert,
    )


# ------------------------------------------------------------------ client side


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Root CA (None: system roots) plus the client's certificate for mTLS."""
    tls.check_client()
    cert, key, ca = _read_pem_files(tls)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _channel_parts(
    tls: TlsConfig | None, options: Options, token: Secret | None
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    opts = list(options)
    if tls is None:
        if token is not None:
            log.debug("bearer token sent over a plaintext channel (local development only)")
        return None, opts
    creds = channel_credentials(tls)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, token_call_credentials(token))
    if tls.server_name_override:
        opts.append(("grpc.ssl_target_name_override", tls.server_name_override))
    return creds, opts


def secure_or_insecure_channel(
    address: str, tls: TlsConfig | None = None, options: Options = (), token: Secret | None = None
) -> grpc.aio.Channel:
    """A grpc.aio channel: TLS when ``tls`` is given; the token rides as call credentials over
    TLS, or as per-call metadata over plaintext (gRPC refuses call credentials without TLS)."""
    creds, opts = _channel_parts(tls, options, token)
    if creds is not None:
        return grpc.aio.secure_channel(address, creds, options=opts)
    interceptors = aio_token_interceptors(token) if token is not None else None
    return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)


def secure_or_insecure_sync_channel(
    address: str, tls: TlsConfig | None = None, options: Options = (), token: Secret | None = None
) -> grpc.Channel:
    """The same for synchronous clients (``cbir query``, the Python client)."""
    creds, opts = _channel_parts(tls, options, token)
    if creds is not None:
        return grpc.secure_channel(address, creds, options=opts)
    channel = grpc.insecure_channel(address, options=opts)
    if token is not None:
        channel = grpc.intercept_channel(channel, SyncTokenInterceptor(token))
    return channel


def client_channel(
    address: str, security: ClientSecurity, options: Options = ()
) -> grpc.aio.Channel:
    return secure_or_insecure_channel(address, security.tls, options, security.token)


def client_sync_channel(
    address: str, security: ClientSecurity, options: Options = ()
) -> grpc.Channel:
    return secure_or_insecure_sync_channel(address, security.tls, options, security.token)


# ------------------------------------------------------------------ CLI


def _env(prefix: str, name: str) -> str:
    return "CBIR_" + f"{prefix}{name}".upper().replace("-", "_")


def add_security_arguments(
    parser: argparse.ArgumentParser, server: bool, prefix: str = ""
) -> None:
    """``server=True``: what this process serves with. ``server=False``: how it dials others;
    ``prefix`` tells apart two sets in one command (the coordinator uses ``prefix="shard-"`` for
    its channels to the shards). Every flag falls back to an env var, e.g. CBIR_TLS_CERT or
    CBIR_SHARD_TLS_CA; the token itself is never a flag (it would show in ``ps``)."""
    side = "serving" if server else "client"
    group = parser.add_argument_group(f"{prefix}{side} security")

    def flag(name: str, help_text: str, **kw: Any) -> None:
        group.add_argument(
            f"--{prefix}{name}",
            default=os.environ.get(_env(prefix, name)),
            help=f"{help_text} (env {_env(prefix, name)})",
            **kw,
        )

    def switch(name: str, help_text: str) -> None:
        group.add_argument(
            f"--{prefix}{name}",
            action="store_true",
            default=_env_flag(_env(prefix, name)),
            help=f"{help_text} (env {_env(prefix, name)})",
        )

    flag("tls-cert", "PEM certificate chain" + ("" if server else " for mutual TLS"))
    flag("tls-key", "PEM private key" + ("" if server else " for mutual TLS"))
    if server:
        flag("tls-ca", "PEM CA that client certificates must chain to (mutual TLS)")
        switch("tls-require-client-cert", "refuse clients without a certificate signed by --tls-ca")
        flag("auth-token-file", "file of allowed bearer tokens, '<token> [role,role]' per line")
    else:
        flag("tls-ca", "PEM CA the server certificate must chain to (implies TLS)")
        switch("tls", "use TLS with the system roots when no --tls-ca is given")
        flag(
            "tls-server-name",
            "expect this name in the server certificate instead of the host dialled",
        )
        flag(
            "auth-token-file",
            f"file holding the bearer token to send (or env {_env(prefix, 'auth-token')})",
        )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _arg(args: argparse.Namespace, prefix: str, name: str) -> Any:
    return getattr(args, f"{prefix}{name}".replace("-", "_"), None)


def server_security_from_args(args: argparse.Namespace, prefix: str = "") -> ServerSecurity:
    """Check and build the serving configuration; files are read (and validated) now."""
    cert, key, ca = (_path(_arg(args, prefix, n)) for n in ("tls-cert", "tls-key", "tls-ca"))
    require = bool(_arg(args, prefix, "tls-require-client-cert"))
    tls: TlsConfig | None = None
    if cert or key or ca or require:
        tls = TlsConfig(cert, key, ca, require_client_cert=require)
        tls.check_server()
    token_file = _arg(args, prefix, "auth-token-file")
    auth = AuthConfig.from_file(token_file) if token_file else None
    if auth is not None and tls is None:
        log.warning("bearer tokens are checked but TLS is off: tokens cross the network in clear")
    return ServerSecurity(tls=tls, auth=auth)


def client_security_from_args(args: argparse.Namespace, prefix: str = "") -> ClientSecurity:
    cert, key, ca = (_path(_arg(args, prefix, n)) for n in ("tls-cert", "tls-key", "tls-ca"))
    name = _arg(args, prefix, "tls-server-name")
    tls: TlsConfig | None = None
    if cert or key or ca or name or _arg(args, prefix, "tls"):
        tls = TlsConfig(cert, key, ca, server_name_override=name)
        tls.check_client()
    return ClientSecurity(tls=tls, token=_client_token(args, prefix))


def _client_token(args: argparse.Namespace, prefix: str) -> Secret | None:
    token_file = _arg(args, prefix, "auth-token-file")
    if token_file:
        return read_client_token(token_file)
    value = os.environ.get(_env(prefix, "auth-token"), "").strip()
    return Secret(value) if value else None


def read_client_token(path: str | Path) -> Secret:
    """The first token of a token file (a bare-token Secret file, or a server file's line)."""
    text = read_secret_file(path, "auth token").decode("utf-8", errors="replace")
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            return Secret(fields[0])
    raise errors.InvalidArgument(f"auth token file holds no token: {path}")
