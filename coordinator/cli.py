"""``cbir serve-coordinator``: fan queries out to every shard and merge top-K.

Every flag but the security ones is generated from a field of ``CoordinatorConfig`` (and the
configs it nests) by ``cbir.options``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from cbir.errors import InvalidArgument
from cbir.options import add_options, build
from cbir.rpc.logs import LogOptions, configure
from cbir.rpc.security import (
    add_security_arguments,
    client_security_from_args,
    server_security_from_args,
)
from cbir.rpc.serving import check_can_listen
from coordinator.config import CoordinatorConfig
from coordinator.topology import load_topology_file, split_address

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CoordinatorConfig)
    add_options(parser, LogOptions)
    add_security_arguments(parser, server=True)
    add_security_arguments(parser, server=False, prefix="shard-")


def _num_shards(args: argparse.Namespace, config: CoordinatorConfig) -> int:
    if config.topology_file is not None:
        return len(load_topology_file(config.topology_file).shards)
    if args.shards is None:
        raise InvalidArgument("--shard-dns needs --shards N (N > 0)")
    return int(args.shards)


def build_config(args: argparse.Namespace) -> CoordinatorConfig:
    # Built once without the shard count to learn which of --topology / --shard-dns won.
    draft: CoordinatorConfig = build(CoordinatorConfig, args, {"num_shards": 0})
    if draft.dns_server is not None:
        try:
            split_address(draft.dns_server)
        except ValueError as exc:
            raise InvalidArgument(f"--dns-server: {exc}") from exc
    config: CoordinatorConfig = build(CoordinatorConfig, args, {
        "num_shards": _num_shards(args, draft),
        "security": server_security_from_args(args),
        "shard_security": client_security_from_args(args, prefix="shard-"),
    })
    return config


def run(args: argparse.Namespace) -> int:
    from coordinator.server import serve

    log_format = build(LogOptions, args).log_format
    configure(log_format)
    config = build_config(args)
    if config.metrics_port:  # prometheus' own failure would be a traceback after start-up
        for worker in range(config.workers):  # worker i: metrics_port + i
            check_can_listen(config.host, config.metrics_port + worker)
    if config.workers > 1:
        from coordinator.workers import serve_workers

        return serve_workers(config, log_format)
    asyncio.run(serve(config))
    return 0
