"""The web server's configuration: one frozen dataclass built at the entry point.

A field declared with ``option(...)`` is also a ``serve-web`` flag and a ``CBIR_*`` environment
variable (``cbir.options``); its default here is the only one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.options import option
from cbir.rpc.security import ClientSecurity, ServerSecurity

MIB = 1024 * 1024


@dataclass(frozen=True)
class WebConfig:
    coordinator: str = option(required=True, metavar="HOST:PORT",
                              help="the coordinator's gRPC address")
    host: str = option("127.0.0.1", help="address to serve HTTP on")
    port: int = option(8080, non_negative=True, help="0 = any free port")
    timeout_s: float = option(10.0, flag="--timeout", positive=True, metavar="S",
                              help="seconds per coordinator call")
    default_k: int = option(12, flag="--k", positive=True, help="hits when a query sets none")
    thumb_px: int = option(256, flag="--thumbnail-px", positive=True,
                           help="longest side of thumbnails")
    # Bounded LRU of encoded thumbnails (least recently used go first).
    thumb_cache_bytes: int = option(64 * MIB, flag="--thumbnail-cache-mb", scale=MIB,
                                    non_negative=True, metavar="MB",
                                    help="memory for cached thumbnails (0 = no cache)")
    limits: Limits = DEFAULT_LIMITS
    # How this process serves (TLS, bearer tokens for /api/*) and dials the coordinator.
    security: ServerSecurity = field(default_factory=ServerSecurity)
    coordinator_security: ClientSecurity = field(default_factory=ClientSecurity)
