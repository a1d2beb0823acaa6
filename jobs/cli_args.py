"""What both job CLIs share on top of ``cbir.options`` (flags generated from the configs'
fields): the repeatable ``--conf``, the progress switch, and the engine options' assembly."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cbir.errors import InvalidArgument
from cbir.options import option
from jobs.engine_types import EngineOptions


@dataclass(frozen=True)
class OutputOptions:
    show_progress: bool = option(True, flag="--no-progress", env="CBIR_NO_PROGRESS",
                                 help="no progress output on stderr")


def conf_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. "
                                         "spark.executor.memory=4g")
    return key.strip(), value


def add_conf_argument(parser: argparse.ArgumentParser) -> None:
    # Repeatable, so not a generated option (cbir.options makes one value per flag).
    parser.add_argument("--conf", action="append", type=conf_pair, default=[],
                        metavar="KEY=VALUE",
                        help="a Spark setting for the session (repeatable), e.g. "
                             "spark.executor.memory=4g")


def engine_overrides(args: argparse.Namespace, app_name: str) -> dict[str, object]:
    """The engine fields that are not generated options, for ``cbir.options.build``."""
    return {"engine.conf": tuple(args.conf), "engine.app_name": app_name,
            "engine.verbose": getattr(args, "verbose", 0) > 0}


def check_engine(options: EngineOptions) -> EngineOptions:
    if options.engine == "sequential" and (options.master or options.conf):
        # Silently ignoring them would run on one machine what the user meant for a cluster.
        raise InvalidArgument(f"--master/--conf need --engine spark (the {options.engine} "
                              "engine runs every task in this process)")
    return options
