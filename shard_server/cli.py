"""``cbir serve-shard`` / ``python -m shard_server``: serve one shard's index over gRPC."""

from __future__ import annotations

import argparse

from cbir.errors import InvalidArgument
from cbir.faiss_params import EF_SEARCH, NPROBE
from cbir.limits import DEFAULT_LIMITS
from cbir.rpc.logs import LOG_FORMATS, configure
from cbir.rpc.security import add_security_arguments, server_security_from_args
from shard_server.batcher import BatchConfig
from shard_server.index_store import Expectations
from shard_server.searcher import SearcherConfig
from shard_server.server import ServerConfig, main_async


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="index root (path or s3://) holding shard=NNN/")
    where.add_argument("--index-pointer", metavar="URI",
                       help="object whose content is the index root to serve (e.g. "
                            "s3://b/indexes/CURRENT); watched: a change loads the new version")
    parser.add_argument("--pointer-interval", type=float, default=10.0, metavar="S",
                        help="seconds between reads of --index-pointer")
    parser.add_argument("--keep-previous-seconds", type=float, default=120.0, metavar="S",
                        help="after a swap, keep answering queries pinned to the previous "
                             "version this long (0 = free it at once)")
    parser.add_argument("--shard", type=int, required=True, help="which shard to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0 = any free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0 = off")
    parser.add_argument("--expect-dim", type=int, default=None,
                        help="refuse an index of another dim")
    parser.add_argument("--expect-model-version", default=None,
                        help="refuse an index built with another model version")
    parser.add_argument("--nprobe", type=int, default=0,
                        help="default IVF nprobe (0 = the manifest's tuned value)")
    parser.add_argument("--ef-search", type=int, default=0,
                        help="default HNSW efSearch (0 = the manifest's tuned value)")
    parser.add_argument("--drain-seconds", type=float, default=5.0,
                        help="on SIGTERM, how long in-flight calls may finish")
    parser.add_argument("--search-threads", type=int, default=2)
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="extra wait to batch concurrent queries (queued ones always batch)")
    parser.add_argument("--batch-max-rows", type=int, default=256)
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument("--faiss-threads", type=int, default=0, metavar="N",
                        help="OpenMP threads per Faiss call (0 = Faiss's default, one per core)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="json = one JSON object per line")
    parser.add_argument("--admin-port", type=int, default=None, metavar="PORT",
                        help="also serve on 127.0.0.1:PORT, where admin RPCs (LoadIndex) need "
                             "no token (0 = any free port; default: no admin port)")
    parser.add_argument("--allowed-index-root", action="append", default=[], metavar="URI",
                        help="LoadIndex / pointer targets must lie under this root (repeatable; "
                             "default: the parent of --index or of --index-pointer)")
    add_security_arguments(parser, server=True)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.pointer_interval <= 0:
        raise InvalidArgument("--pointer-interval must be positive")
    if args.faiss_threads < 0:
        raise InvalidArgument("--faiss-threads must be >= 0")
    if args.keep_previous_seconds < 0:
        raise InvalidArgument("--keep-previous-seconds must be >= 0")
    if args.admin_port is not None and not 0 <= args.admin_port <= 65535:
        raise InvalidArgument("--admin-port must be in 0..65535")
    defaults = {name: value for name, value in ((NPROBE, args.nprobe),
                                                (EF_SEARCH, args.ef_search)) if value > 0}
    searcher = SearcherConfig(
        shard=args.shard,
        expect=Expectations(args.expect_dim, args.expect_model_version),
        default_params=defaults,
        limits=DEFAULT_LIMITS,
        batch=BatchConfig(not args.no_batching, args.batch_window_ms / 1000,
                          args.batch_max_rows),
        threads=args.search_threads,
        faiss_threads=args.faiss_threads,
        keep_previous_s=args.keep_previous_seconds,
    )
    return ServerConfig(index_uri=args.index or "", searcher=searcher, host=args.host,
                        port=args.port, metrics_port=args.metrics_port,
                        drain_s=args.drain_seconds, security=server_security_from_args(args),
                        index_pointer=args.index_pointer,
                        pointer_interval_s=args.pointer_interval,
                        admin_port=args.admin_port,
                        allowed_index_roots=tuple(args.allowed_index_root))


def run(args: argparse.Namespace) -> int:
    configure(args.log_format)
    return main_async(config_from_args(args))
