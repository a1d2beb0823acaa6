"""``cbir build-index``: one Faiss index per shard from an embeddings run.

Every default comes from ``BuildConfig`` (one source: the CLI and Python callers agree)."""

from __future__ import annotations

import argparse
import json

from jobs.build_index.build import BuildConfig, build_index
from jobs.build_index.select import GIB
from jobs.cli_args import (
    add_engine_arguments,
    engine_options,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)

_DEFAULTS = BuildConfig(embeddings="", output="", num_shards=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--embeddings", required=True, help="embeddings run (path or s3://)")
    parser.add_argument("--output", required=True, help="index root to write (path or s3://)")
    parser.add_argument("--shards", type=positive_int, required=True, help="number of shards N")
    parser.add_argument("--index", default=d.factory, metavar="FACTORY",
                        help="Faiss factory (Flat, HNSW32, IVF4096,SQ8, OPQ32,IVF4096,PQ32...); "
                             "default: chosen from size, dim and --memory-budget-gb")
    add_engine_arguments(parser, d.engine.engine)
    parser.add_argument("--memory-budget-gb", type=positive_float,
                        default=d.memory_budget_bytes / GIB,
                        help="RAM one shard server may spend on its index (auto selection; "
                             "default: %(default)s)")
    parser.add_argument("--target-recall", type=fraction, default=d.target_recall,
                        help="recall@10 the tuned nprobe/efSearch must reach "
                             "(default: %(default)s)")
    parser.add_argument("--train-size", type=positive_int, default=d.train_size,
                        help="vectors sampled to train IVF/PQ (default: %(default)s)")
    parser.add_argument("--tune-queries", type=positive_int, default=d.tune_queries,
                        help="queries used to tune search params (default: %(default)s)")
    parser.add_argument("--faiss-threads", type=non_negative_int, default=d.faiss_threads,
                        help="OpenMP threads per shard task (0 = all cores)")
    parser.add_argument("--shard-only", type=non_negative_int, default=d.shard_only,
                        metavar="K",
                        help="build shard K only (one pod per shard, e.g. a Kubernetes Indexed "
                             "Job); the process that completes the set writes the manifest")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        embeddings=args.embeddings,
        output=args.output,
        num_shards=args.shards,
        factory=args.index,
        engine=engine_options(args, "cbir-build-index"),
        memory_budget_bytes=int(args.memory_budget_gb * GIB),
        target_recall=args.target_recall,
        train_size=args.train_size,
        tune_queries=args.tune_queries,
        faiss_threads=args.faiss_threads,
        shard_only=args.shard_only,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    manifest = build_index(config, show_progress=not args.no_progress)
    if manifest is None:
        print(json.dumps({"shard": config.shard_only, "index_manifest": "pending: other shards "
                          "are not committed yet"}))
    else:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0
