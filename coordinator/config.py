"""The coordinator's configuration: one frozen dataclass built at the entry point.

A field declared with ``option(...)`` is also a ``serve-coordinator`` flag and a ``CBIR_*``
environment variable (``cbir.options``); its default here is the only one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.model_names import DEFAULT_MODEL, MODEL_NAMES, RUNTIME_NAMES
from cbir.options import nested, option
from cbir.rpc.security import ClientSecurity, ServerSecurity
from cbir.workers import workers_option


@dataclass(frozen=True)
class BalancerConfig:
    # Consecutive UNAVAILABLE / DEADLINE_EXCEEDED answers that take a replica out of rotation.
    eject_after_failures: int = option(
        3, flag="--eject-after", positive=True,
        help="consecutive failures that take a replica out of rotation")
    # How often an ejected replica is health-checked to bring it back.
    reprobe_interval_s: float = option(
        1.0, flag="--reprobe-interval", positive=True, metavar="S",
        help="seconds between health checks of an ejected replica")
    # Weight of the newest latency sample in the EWMA.
    ewma_alpha: float = 0.3
    # A live replica whose newest latency sample is older than this gets a shadow copy of the
    # next call (off the critical path; its answer is dropped) so its estimate stays current
    # without real queries waiting on it. 0 = never.
    probe_stale_after_s: float = 1.0
    # "p2c" (power of two choices on in-flight x latency) or "round-robin" (a baseline).
    # (coordinator.balancer.BALANCERS has one class per name; a test keeps them equal.)
    policy: str = option("p2c", flag="--balancer", choices=("p2c", "round-robin"),
                         help="replica choice per shard (round-robin: a baseline, no latency "
                              "awareness)")


@dataclass(frozen=True)
class CacheConfig:
    """Sizes of the coordinator's caches (coordinator.caching, docs/filters.md)."""

    result_cache_bytes: int = option(
        64 * 1024 * 1024, non_negative=True, metavar="BYTES",
        help="memory for cached search answers (0 = off); keyed by the index version and "
             "each shard's log position, so neither a roll nor a write is answered from "
             "before it")
    embedding_cache_bytes: int = option(
        32 * 1024 * 1024, non_negative=True, metavar="BYTES",
        help="memory for embeddings of query images, by content hash (0 = off)")


@dataclass(frozen=True)
class CoordinatorConfig:
    # With --topology the file's shard count; with --shard-dns the flag.
    num_shards: int = option(flag="--shards", positive=True,
                             help="number of shards (with --shard-dns)")
    topology_file: str | None = option(None, flag="--topology", mutex="where", required=True,
                                       metavar="FILE",
                                       help='JSON {"shards": {"0": ["host:port", ...], ...}}')
    shard_dns: str | None = option(
        None, mutex="where", required=True, metavar="TEMPLATE",
        help="per-shard DNS name with port, e.g. shard-{shard}.cbir.svc.cluster.local:50051 "
             "(every A record is a replica); needs --shards")
    # None = the system resolver.
    dns_server: str | None = option(None, metavar="HOST:PORT",
                                    help="ask this DNS server instead of the system resolver")
    resolve_interval_s: float = option(10.0, flag="--resolve-interval", positive=True,
                                       metavar="S", help="seconds between re-resolving replicas")
    host: str = option("127.0.0.1", help="address to listen on")
    port: int = option(50052, non_negative=True, help="0 = any free port")
    model: str = option(DEFAULT_MODEL, choices=MODEL_NAMES,
                        help="query embedding model; must be the one the index was built with")
    weights: str | None = option(None, help="model weights path or s3:// URI")
    device: str | None = option(None,
                                help="torch device for the query embedder (default: auto)")
    runtime: str = option("auto", choices=RUNTIME_NAMES,
                          help="query embedder runtime: auto (CUDA torch on a GPU, ONNX Runtime "
                               "on CPU) | torch | onnxruntime (same embeddings to 1e-4)")
    image_queries: bool = option(True, help="serve vector and image-id queries only (no torch "
                                            "needed)")
    hedge_after_ms: float | None = option(
        None, non_negative=True, metavar="MS",
        help="send a second call to another replica of a shard that has not answered after MS "
             "milliseconds (default: adaptive, after the shard's recent p95 latency)")
    # Without a fixed --hedge-after-ms: hedge a shard call after the shard's recent p95 latency
    # (at least hedge_min_ms), once enough samples exist. False = no hedging.
    adaptive_hedge: bool = option(True, help="no hedging unless --hedge-after-ms is given")
    hedge_quantile: float = 0.95
    hedge_min_ms: float = 2.0
    # Cross-query micro-batching: concurrent pinned vector queries with the same (k, params,
    # version) share one ShardSearchRequest per shard. At most this many batch calls per live
    # replica are in flight per shard; what queues meanwhile goes in the next one. 0 = off.
    batch_in_flight_per_replica: int = option(
        1, flag="--batch-in-flight", non_negative=True, metavar="N",
        help="batched shard calls in flight per live replica; queries that queue meanwhile "
             "share the next call (0 = one call per query)")
    max_batch: int = 64
    # Bounded queues (RESOURCE_EXHAUSTED beyond): queries waiting for a shard call slot, per
    # shard; image queries waiting for the embedder (each holds up to max_image_bytes).
    shard_max_queued: int = 1024
    embed_max_queued: int = option(
        32, positive=True, metavar="N",
        help="image queries that may wait for the embedder; more are refused with "
             "RESOURCE_EXHAUSTED")
    # Kept back from the caller's deadline so the merged answer leaves before it expires.
    deadline_margin_s: float = 0.02
    probe_timeout_s: float = 1.0
    stats_interval_s: float = 30.0
    # How often every live replica is asked which index versions it holds (version pinning).
    version_interval_s: float = option(
        1.0, flag="--version-interval", positive=True, metavar="S",
        help="seconds between asking every replica which index versions it holds")
    drain_grace_s: float = option(5.0, flag="--drain-grace", non_negative=True, metavar="S",
                                  help="seconds in-flight calls get to finish on SIGTERM")
    metrics_port: int | None = option(None, non_negative=True,
                                      help="serve Prometheus metrics on this port")
    # The live index (docs/live_updates.md): where Upsert/Delete append; "" = writes are off.
    wal: str = option("", metavar="URI",
                      help="write-ahead log root (path or s3://) for Upsert/Delete; the shards' "
                           "--wal must name the same (default: writes are off)")
    # How often each shard's log is listed after its last known entry: the writes of other
    # coordinators change this coordinator's result-cache keys at the latest this much later.
    wal_tail_interval_s: float = option(
        1.0, flag="--wal-tail-interval", positive=True, metavar="S",
        help="seconds between listing the shards' logs for entries written by other "
             "coordinators (bounds how long a cached answer can miss their writes)")
    # After a write is durable, replicas are told at once; this bounds the wait for them.
    wal_push_timeout_s: float = 0.5
    # --workers N: N coordinator processes on one port, each with its own replica channels,
    # balancer state and caches (docs/coordinator.md, "Workers").
    workers: int = workers_option()
    worker_index: int | None = None  # set in each worker, never on the command line
    balancer: BalancerConfig = nested(BalancerConfig)
    cache: CacheConfig = nested(CacheConfig)
    limits: Limits = nested(lambda: DEFAULT_LIMITS)
    # TLS / bearer tokens callers must present, and how the coordinator dials its shards.
    security: ServerSecurity = field(default_factory=ServerSecurity)
    shard_security: ClientSecurity = field(default_factory=ClientSecurity)
