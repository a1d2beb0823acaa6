"""``cbir build-index``: one Faiss index per shard from an embeddings run."""

from __future__ import annotations

import argparse
import json

from jobs.build_index.build import BuildConfig, build_index
from jobs.build_index.select import GIB
from jobs.build_index.train_device import TRAIN_DEVICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, help="embeddings run (path or s3://)")
    parser.add_argument("--output", required=True, help="index root to write (path or s3://)")
    parser.add_argument("--shards", type=int, required=True, help="number of shards N")
    parser.add_argument("--index", default=None, metavar="FACTORY",
                        help="Faiss factory (Flat, HNSW32, IVF4096,SQ8, OPQ32,IVF4096,PQ32...); "
                             "default: chosen from size, dim and --memory-budget-gb")
    parser.add_argument("--engine", choices=("spark", "sequential"), default="spark")
    parser.add_argument("--master", default=None, help="Spark master (default local[*])")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="RAM one shard server may spend on its index (auto selection)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 the tuned nprobe/efSearch must reach")
    parser.add_argument("--train-size", type=int, default=200_000,
                        help="vectors sampled to train IVF/PQ")
    parser.add_argument("--train-device", choices=TRAIN_DEVICES, default="auto",
                        help="where IVF k-means trains: auto (the GPU when faiss-gpu sees one, "
                             "else CPU) | cpu | cuda")
    parser.add_argument("--tune-queries", type=int, default=500)
    parser.add_argument("--faiss-threads", type=int, default=0,
                        help="OpenMP threads per shard task (0 = all cores)")
    parser.add_argument("--shard-only", type=int, default=None, metavar="K",
                        help="build shard K only (one pod per shard, e.g. a Kubernetes Indexed "
                             "Job); the process that completes the set writes the manifest")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        embeddings=args.embeddings,
        output=args.output,
        num_shards=args.shards,
        factory=args.index,
        engine=args.engine,
        master=args.master,
        memory_budget_bytes=int(args.memory_budget_gb * GIB),
        target_recall=args.target_recall,
        train_size=args.train_size,
        tune_queries=args.tune_queries,
        faiss_threads=args.faiss_threads,
        train_device=args.train_device,
        shard_only=args.shard_only,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    manifest = build_index(config)
    if manifest is None:
        print(json.dumps({"shard": config.shard_only, "index_manifest": "pending: other shards "
                          "are not committed yet"}))
    else:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0
