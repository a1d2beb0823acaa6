"""``cbir backfill``: embed every image of an S3 bucket/prefix into Parquet parts.

The flags are generated from ``JobOptions`` (and its engine options) by ``cbir.options``: each
default is the field's, and each option also reads ``CBIR_<NAME>``."""

from __future__ import annotations

import argparse
import json

from cbir.options import add_options, build
from jobs.cli_args import OutputOptions, add_conf_argument, check_engine, engine_overrides
from jobs.embed.job import JobOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, JobOptions)
    add_conf_argument(parser)
    add_options(parser, OutputOptions)


def run(args: argparse.Namespace) -> int:
    from jobs.embed.job import build_config, run_backfill

    opts: JobOptions = build(JobOptions, args, engine_overrides(args, "cbir-backfill"))
    output: OutputOptions = build(OutputOptions, args)
    config = build_config(opts)
    manifest = run_backfill(config, check_engine(opts.engine),
                            show_progress=output.show_progress, allow_empty=opts.allow_empty)
    summary = {k: manifest.model_dump().get(k) for k in (
        "num_images", "num_errors", "parts_written", "parts_reused", "tasks_skipped",
        "model", "model_version", "dim", "seconds")}
    print(json.dumps(summary, sort_keys=True))
    return 0
