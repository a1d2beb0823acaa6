"""``cbir serve-shard`` / ``python -m shard_server``: serve one shard's index over gRPC.

Every flag is generated from a field of ``ServerConfig`` (and the configs it nests) by
``cbir.options``; the security flags come from ``cbir.rpc.security``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cbir.faiss_params import EF_SEARCH, NPROBE
from cbir.options import add_options, build, option
from cbir.rpc.logs import LogOptions, configure
from cbir.rpc.security import add_security_arguments, server_security_from_args
from cbir.rpc.serving import check_can_listen
from shard_server.server import ServerConfig, main_async
from shard_server.workers import serve_workers


@dataclass(frozen=True)
class SearchDefaults:
    """Server-wide search parameters; they become ``SearcherConfig.default_params``."""

    nprobe: int = option(0, non_negative=True,
                         help="default IVF nprobe (0 = the manifest's tuned value)")
    ef_search: int = option(0, non_negative=True,
                            help="default HNSW efSearch (0 = the manifest's tuned value)")

    def params(self) -> dict[str, int]:
        return {name: value for name, value in ((NPROBE, self.nprobe),
                                                (EF_SEARCH, self.ef_search)) if value > 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, ServerConfig)
    add_options(parser, SearchDefaults)
    add_options(parser, LogOptions)
    add_security_arguments(parser, server=True)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    defaults: SearchDefaults = build(SearchDefaults, args)
    config: ServerConfig = build(ServerConfig, args, {
        "index_uri": args.index or "",
        "searcher.default_params": defaults.params(),
        "security": server_security_from_args(args),
    })
    return config


def run(args: argparse.Namespace) -> int:
    log_format = build(LogOptions, args).log_format
    configure(log_format)
    config = config_from_args(args)
    if config.metrics_port:  # prometheus' own failure would be a traceback after start-up
        for worker in range(config.workers):  # worker i: metrics_port + i
            check_can_listen(config.host, config.metrics_port + worker)
    if config.workers > 1:
        return serve_workers(config, log_format)
    return main_async(config)
