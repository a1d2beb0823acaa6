"""``cbir index-pointer``: read or atomically flip the "current index version" pointer that
shard servers started with ``--index-pointer`` watch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cbir.options import DefaultsHelpFormatter, add_options, build, option
from shard_server.pointer import read_pointer, write_pointer

POINTER_HELP = "pointer object, e.g. s3://b/indexes/CURRENT"


@dataclass(frozen=True)
class SetOptions:
    target: str = option(flag="--to", env="CBIR_POINTER_TARGET", required=True, metavar="INDEX_URI",
                         help="the index version root to serve, e.g. s3://b/indexes/v2")
    check: bool = option(True, flag="--no-check", env="CBIR_POINTER_NO_CHECK",
                         help="do not require the target's manifest.json to exist")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = sub.add_parser("get", help="print the index URI the pointer names",
                         formatter_class=DefaultsHelpFormatter)
    get.add_argument("pointer", help=POINTER_HELP)
    put = sub.add_parser("set", help="point at another index version (one atomic write)",
                         formatter_class=DefaultsHelpFormatter)
    put.add_argument("pointer", help=POINTER_HELP)
    add_options(put, SetOptions)


def run(args: argparse.Namespace) -> int:
    if args.action == "get":
        print(read_pointer(args.pointer))
        return 0
    opts: SetOptions = build(SetOptions, args)
    write_pointer(args.pointer, opts.target, check=opts.check)
    print(f"{args.pointer} -> {opts.target.strip()}")
    return 0
