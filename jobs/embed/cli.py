"""``cbir backfill``: embed every image of an S3 bucket/prefix into Parquet parts."""

from __future__ import annotations

import argparse
import json

from cbir.embedding import DEFAULT_MODEL
from jobs.cli_args import (
    add_engine_arguments,
    device,
    engine_options,
    positive_int,
)
from jobs.embed.config import (
    DEFAULT_ENGINE,
    DEFAULT_IO_THREADS,
    DEFAULT_NUM_SHARDS,
    DEFAULT_OBJECTS_PER_TASK,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="s3://BUCKET[/PREFIX] of images")
    parser.add_argument("--output", required=True, help="output directory or s3:// URI")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="efficientnet_lite0 (default, 1280-d) | resnet50 (2048-d)")
    parser.add_argument("--weights", default=None,
                        help="model weights (state_dict): local path or s3:// URI")
    parser.add_argument("--device", type=device, default=None,
                        help="cpu | cuda[:N] (default: cuda if any)")
    add_engine_arguments(parser, DEFAULT_ENGINE)
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per model call (default: the model's)")
    parser.add_argument("--num-shards", type=positive_int, default=DEFAULT_NUM_SHARDS,
                        help="fills shard = image_id %% N (default: %(default)s)")
    parser.add_argument("--objects-per-task", type=positive_int, default=None,
                        help="objects per task = per Parquet part (default: sized from the "
                             f"bucket and the cluster's cores, at most {DEFAULT_OBJECTS_PER_TASK})")
    parser.add_argument("--io-threads", type=positive_int, default=DEFAULT_IO_THREADS,
                        help="fetch+decode threads per task (default: %(default)s)")
    parser.add_argument("--inventory", default=None, metavar="URI",
                        help="plan from this S3 Inventory report (the s3://.../manifest.json of "
                             "a CSV or Parquet inventory of the input bucket) instead of "
                             "listing the bucket")
    parser.add_argument("--allow-empty", action="store_true",
                        help="succeed on an input with no objects (default: an error, since "
                             "it is usually a typo'd bucket or prefix)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from jobs.embed.job import JobOptions, build_config, run_backfill

    opts = JobOptions(
        input=args.input, output=args.output, model=args.model, weights=args.weights,
        device=args.device, batch_size=args.batch_size, num_shards=args.num_shards,
        objects_per_task=args.objects_per_task, io_threads=args.io_threads,
        inventory=args.inventory,
    )
    config = build_config(opts)
    manifest = run_backfill(config, engine_options(args, "cbir-backfill"),
                            show_progress=not args.no_progress, allow_empty=args.allow_empty)
    summary = {k: manifest.model_dump().get(k) for k in (
        "num_images", "num_errors", "parts_written", "parts_reused", "tasks_skipped",
        "model", "model_version", "dim", "seconds")}
    print(json.dumps(summary, sort_keys=True))
    return 0
