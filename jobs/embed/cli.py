"""``cbir backfill``: embed every image of an S3 bucket/prefix into Parquet parts."""

from __future__ import annotations

import argparse
import json
import sys

from cbir.embedding import DEFAULT_MODEL
from jobs.embed.config import DEFAULT_IO_THREADS, DEFAULT_OBJECTS_PER_TASK
from jobs.embed.distribute import ENGINES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="s3://BUCKET[/PREFIX] of images")
    parser.add_argument("--output", required=True, help="output directory or s3:// URI")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="efficientnet_lite0 (default, 1280-d) | resnet50 (2048-d)")
    parser.add_argument("--weights", default=None,
                        help="model weights (state_dict): local path or s3:// URI")
    parser.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if any)")
    parser.add_argument("--engine", choices=ENGINES, default="spark")
    parser.add_argument("--master", default=None,
                        help="Spark master (local[*], spark://host:7077, k8s://..., yarn)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per model call")
    parser.add_argument("--num-shards", type=int, default=1, help="fills shard = image_id %% N")
    parser.add_argument("--objects-per-task", type=int, default=DEFAULT_OBJECTS_PER_TASK,
                        help="objects per task = per Parquet part")
    parser.add_argument("--io-threads", type=int, default=DEFAULT_IO_THREADS,
                        help="fetch+decode threads per task")
    parser.add_argument("--with-tags", action="store_true",
                        help="keep each object's tags as attributes tag_NAME (one more request "
                             "per object)")
    parser.add_argument("--attributes", default=None, metavar="URI",
                        help="sidecar table (Parquet or CSV, local or s3://) with a 'key' "
                             "column: its typed columns become filterable metadata")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jobs.embed.job import JobOptions, build_config, run_backfill

    opts = JobOptions(
        input=args.input, output=args.output, model=args.model, weights=args.weights,
        device=args.device, batch_size=args.batch_size, num_shards=args.num_shards,
        objects_per_task=args.objects_per_task, io_threads=args.io_threads,
        engine=args.engine, master=args.master, with_tags=args.with_tags,
        attributes=args.attributes,
    )
    config = build_config(opts)
    manifest = run_backfill(config, opts.engine, opts.master,
                            show_progress=not args.no_progress and sys.stderr.isatty())
    summary = {k: manifest.model_dump().get(k) for k in (
        "num_images", "num_errors", "parts_written", "parts_reused", "tasks_skipped",
        "model", "model_version", "dim", "seconds")}
    print(json.dumps(summary, sort_keys=True))
    return 0

