"""The coordinator's configuration: one frozen dataclass built at the entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.rpc.security import ClientSecurity, ServerSecurity


@dataclass(frozen=True)
class BalancerConfig:
    # Consecutive UNAVAILABLE / DEADLINE_EXCEEDED answers that take a replica out of rotation.
    eject_after_failures: int = 3
    # How often an ejected replica is health-checked to bring it back.
    reprobe_interval_s: float = 1.0
    # Weight of the newest latency sample in the EWMA.
    ewma_alpha: float = 0.3
    # A latency sample this old counts for ~37% (e^-1): a replica that looked slow once (e.g.
    # its first call paid for the connection) is tried again instead of being starved.
    ewma_decay_s: float = 2.0


@dataclass(frozen=True)
class CoordinatorConfig:
    num_shards: int
    topology_file: str | None = None
    shard_dns: str | None = None  # e.g. "shard-{shard}.cbir.svc.cluster.local:50051"
    dns_server: str | None = None  # "HOST:PORT"; system resolver when None
    resolve_interval_s: float = 10.0
    host: str = "127.0.0.1"
    port: int = 50052
    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str | None = None
    image_queries: bool = True
    hedge_after_ms: float | None = None
    # Kept back from the caller's deadline so the merged answer leaves before it expires.
    deadline_margin_s: float = 0.02
    probe_timeout_s: float = 1.0
    stats_interval_s: float = 30.0
    # How often every live replica is asked which index versions it holds (version pinning).
    version_interval_s: float = 1.0
    drain_grace_s: float = 5.0
    metrics_port: int | None = None
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    limits: Limits = DEFAULT_LIMITS
    # TLS / bearer tokens callers must present, and how the coordinator dials its shards.
    security: ServerSecurity = field(default_factory=ServerSecurity)
    shard_security: ClientSecurity = field(default_factory=ClientSecurity)
