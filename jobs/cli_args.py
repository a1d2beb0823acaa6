"""Argument types and the engine flags both job CLIs share.

Invalid numbers are refused by the parser (one line, exit 2) so that nothing starts with a
value that would silently do the wrong thing (``--batch-size -5`` used to commit empty parts).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from cbir.errors import InvalidArgument
from jobs.engine_types import ENGINES, EngineOptions

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _number(kind: Callable[[str], float], minimum: float, inclusive: bool, what: str
            ) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


positive_int = _number(int, 1, True, "a positive integer")
non_negative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0, False, "a positive number")


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1]")
    return value


def device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    return text


def conf_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. "
                                         "spark.executor.memory=4g")
    return key.strip(), value


def add_engine_arguments(parser: argparse.ArgumentParser, default_engine: str) -> None:
    parser.add_argument("--engine", choices=ENGINES, default=default_engine,
                        help="where tasks run (default: %(default)s)")
    parser.add_argument("--master", default=None,
                        help="Spark master: local[*] (default), local[N], spark://HOST:7077, "
                             "k8s://https://HOST:443, yarn")
    parser.add_argument("--conf", action="append", type=conf_pair, default=[],
                        metavar="KEY=VALUE",
                        help="a Spark setting for the session (repeatable), e.g. "
                             "spark.executor.memory=4g")
    parser.add_argument("--forward-aws-credentials", action="store_true",
                        help="ship this machine's static AWS keys (AWS_ACCESS_KEY_ID, ...) to "
                             "the executors. Risky: anyone who can read the job's tasks or "
                             "executor environment sees them; prefer executor roles")


def engine_options(args: argparse.Namespace, app_name: str) -> EngineOptions:
    if args.engine == "sequential" and (args.master or args.conf):
        # Silently ignoring them would run on one machine what the user meant for a cluster.
        raise InvalidArgument(f"--master/--conf need --engine spark (the {args.engine} engine "
                              "runs every task in this process)")
    return EngineOptions(
        engine=args.engine, master=args.master, conf=tuple(args.conf),
        forward_aws_credentials=args.forward_aws_credentials,
        verbose=getattr(args, "verbose", 0) > 0, app_name=app_name,
    )
