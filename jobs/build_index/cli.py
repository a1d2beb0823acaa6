"""``cbir build-index``: one Faiss index per shard from an embeddings run.

The flags are generated from ``BuildConfig`` (and its engine options) by ``cbir.options``: each
default is the field's, and each option also reads ``CBIR_<NAME>``."""

from __future__ import annotations

import argparse
import dataclasses
import json

from cbir.options import add_options, build
from jobs.build_index.build import BuildConfig, build_index
from jobs.cli_args import OutputOptions, add_conf_argument, check_engine, engine_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, BuildConfig)
    add_conf_argument(parser)
    add_options(parser, OutputOptions)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    config: BuildConfig = build(BuildConfig, args, engine_overrides(args, "cbir-build-index"))
    return dataclasses.replace(config, engine=check_engine(config.engine))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    output: OutputOptions = build(OutputOptions, args)
    manifest = build_index(config, show_progress=output.show_progress)
    if manifest is None:
        print(json.dumps({"shard": config.shard_only, "index_manifest": "pending: other shards "
                          "are not committed yet"}))
    else:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0
