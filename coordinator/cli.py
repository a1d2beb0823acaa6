"""``cbir serve-coordinator``: fan queries out to every shard and merge top-K."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

from cbir.errors import InvalidArgument
from cbir.limits import DEFAULT_LIMITS
from cbir.rpc.logs import LOG_FORMATS, configure
from cbir.rpc.security import (
    add_security_arguments,
    client_security_from_args,
    server_security_from_args,
)
from coordinator.balancer import BALANCERS
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.topology import load_topology_file, split_address

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", metavar="FILE",
                       help='JSON {"shards": {"0": ["host:port", ...], ...}}')
    where.add_argument("--shard-dns", metavar="TEMPLATE",
                       help="per-shard DNS name with port, e.g. "
                            "shard-{shard}.cbir.svc.cluster.local:50051 (every A record is a "
                            "replica); needs --shards")
    parser.add_argument("--shards", type=int, help="number of shards (with --shard-dns)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="query embedding model; must be the one the index was built with")
    parser.add_argument("--weights", help="model weights path or s3:// URI")
    parser.add_argument("--device", help="torch device for the query embedder (default: auto)")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                        help="query embedder runtime: auto (CUDA torch on a GPU, ONNX Runtime "
                             "on CPU) | torch | onnxruntime (same embeddings to 1e-4)")
    parser.add_argument("--no-image-queries", action="store_true",
                        help="serve vector and image-id queries only (no torch needed)")
    parser.add_argument("--resolve-interval", type=float, default=10.0, metavar="S",
                        help="seconds between re-resolving replicas")
    parser.add_argument("--dns-server", metavar="HOST:PORT",
                        help="ask this DNS server instead of the system resolver")
    parser.add_argument("--hedge-after-ms", type=float, metavar="MS",
                        help="send a second call to another replica of a shard that has not "
                             "answered after MS milliseconds (default: adaptive, after the "
                             "shard's recent p95 latency)")
    parser.add_argument("--no-adaptive-hedge", action="store_true",
                        help="no hedging unless --hedge-after-ms is given")
    parser.add_argument("--balancer", choices=sorted(BALANCERS), default="p2c",
                        help="replica choice per shard (round-robin: a baseline, no latency "
                             "awareness)")
    parser.add_argument("--batch-in-flight", type=int, metavar="N",
                        default=CoordinatorConfig.batch_in_flight_per_replica,
                        help="batched shard calls in flight per live replica; queries that "
                             "queue meanwhile share the next call (0 = one call per query)")
    parser.add_argument("--deadline-ms", type=float, metavar="MS",
                        default=DEFAULT_LIMITS.default_deadline_s * 1000,
                        help="deadline of requests that set none")
    parser.add_argument("--eject-after", type=int, default=BalancerConfig.eject_after_failures,
                        help="consecutive failures that take a replica out of rotation")
    parser.add_argument("--reprobe-interval", type=float,
                        default=BalancerConfig.reprobe_interval_s, metavar="S",
                        help="seconds between health checks of an ejected replica")
    parser.add_argument("--drain-grace", type=float, default=5.0, metavar="S",
                        help="seconds in-flight calls get to finish on SIGTERM")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--version-interval", type=float, default=1.0, metavar="S",
                        help="seconds between asking every replica which index versions it holds")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="json = one JSON object per line")
    add_security_arguments(parser, server=True)
    add_security_arguments(parser, server=False, prefix="shard-")


def build_config(args: argparse.Namespace) -> CoordinatorConfig:
    if args.topology is not None:
        num_shards = len(load_topology_file(args.topology).shards)
    else:
        if args.shards is None or args.shards <= 0:
            raise InvalidArgument("--shard-dns needs --shards N (N > 0)")
        num_shards = args.shards
    if args.dns_server is not None:
        try:
            split_address(args.dns_server)
        except ValueError as exc:
            raise InvalidArgument(f"--dns-server: {exc}") from exc
    if args.version_interval <= 0:
        raise InvalidArgument("--version-interval must be positive")
    if args.batch_in_flight < 0:
        raise InvalidArgument("--batch-in-flight must be >= 0")
    if args.deadline_ms <= 0:
        raise InvalidArgument("--deadline-ms must be positive")
    limits = dataclasses.replace(DEFAULT_LIMITS, default_deadline_s=args.deadline_ms / 1000.0)
    return CoordinatorConfig(
        num_shards=num_shards,
        topology_file=args.topology,
        shard_dns=args.shard_dns,
        dns_server=args.dns_server,
        resolve_interval_s=args.resolve_interval,
        host=args.host,
        port=args.port,
        model=args.model,
        weights=args.weights,
        device=args.device,
        runtime=args.runtime,
        image_queries=not args.no_image_queries,
        hedge_after_ms=args.hedge_after_ms,
        adaptive_hedge=not args.no_adaptive_hedge,
        batch_in_flight_per_replica=args.batch_in_flight,
        drain_grace_s=args.drain_grace,
        metrics_port=args.metrics_port,
        version_interval_s=args.version_interval,
        balancer=BalancerConfig(
            eject_after_failures=args.eject_after, reprobe_interval_s=args.reprobe_interval,
            policy=args.balancer,
        ),
        limits=limits,
        security=server_security_from_args(args),
        shard_security=client_security_from_args(args, prefix="shard-"),
    )


def run(args: argparse.Namespace) -> int:
    from coordinator.server import serve

    configure(args.log_format)
    asyncio.run(serve(build_config(args)))
    return 0
