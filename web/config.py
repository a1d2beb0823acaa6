"""The web server's configuration, built once by the CLI (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.rpc.security import ClientSecurity, ServerSecurity

DEFAULT_K = 12


@dataclass(frozen=True)
class WebConfig:
    coordinator: str  # HOST:PORT of the coordinator's public gRPC API
    host: str = "127.0.0.1"
    port: int = 8080
    timeout_s: float = 10.0  # per coordinator call
    limits: Limits = DEFAULT_LIMITS
    default_k: int = DEFAULT_K
    thumb_px: int = 256  # longest side of a thumbnail
    thumb_cache_bytes: int = 64 * 1024 * 1024  # bounded LRU of encoded thumbnails
    # How this process serves (TLS, bearer tokens for /api/*) and dials the coordinator.
    security: ServerSecurity = field(default_factory=ServerSecurity)
    coordinator_security: ClientSecurity = field(default_factory=ClientSecurity)
