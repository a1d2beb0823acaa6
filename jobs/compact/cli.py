"""``cbir compact``: fold the write-ahead log into a new index version and flip the pointer.

The flags are generated from ``CompactConfig`` (and its engine options) by ``cbir.options``;
each also reads ``CBIR_<NAME>``. Prints a JSON summary on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import json

from cbir.options import add_options, build
from jobs.cli_args import OutputOptions, add_conf_argument, check_engine, engine_overrides
from jobs.compact.compact import CompactConfig, compact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CompactConfig)
    add_conf_argument(parser)
    add_options(parser, OutputOptions)


def config_from_args(args: argparse.Namespace) -> CompactConfig:
    config: CompactConfig = build(CompactConfig, args, engine_overrides(args, "cbir-compact"))
    return dataclasses.replace(config, engine=check_engine(config.engine))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    output: OutputOptions = build(OutputOptions, args)
    summary = compact(config, show_progress=output.show_progress)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
