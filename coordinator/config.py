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
    # Legacy: when set, a latency sample this old counts for ~37% (e^-1) and fades towards the
    # fastest replica's. Off by default: fading made a known-slow replica look cheap again every
    # few seconds, and the queries it then got made the p99 (see docs/coordinator.md).
    ewma_decay_s: float | None = None
    # A live replica whose newest latency sample is older than this gets a shadow copy of the
    # next call (off the critical path; its answer is dropped) so its estimate stays current
    # without real queries waiting on it. 0 = never.
    probe_stale_after_s: float = 1.0
    # "p2c" (power of two choices on in-flight x latency) or "round-robin" (a baseline).
    policy: str = "p2c"


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
    runtime: str = "auto"  # query embedder: auto | torch | onnxruntime
    image_queries: bool = True
    hedge_after_ms: float | None = None
    # Without a fixed --hedge-after-ms: hedge a shard call after the shard's recent p95 latency
    # (at least hedge_min_ms), once enough samples exist. False = no hedging.
    adaptive_hedge: bool = True
    hedge_quantile: float = 0.95
    hedge_min_ms: float = 2.0
    # Cross-query micro-batching: concurrent pinned vector queries with the same (k, params,
    # version) share one ShardSearchRequest per shard. At most this many batch calls per live
    # replica are in flight per shard; what queues meanwhile goes in the next one. 0 = off.
    batch_in_flight_per_replica: int = 1
    max_batch: int = 64
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
