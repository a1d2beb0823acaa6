"""``cbir index-pointer``: read or atomically flip the "current index version" pointer that
shard servers started with ``--index-pointer`` watch."""

from __future__ import annotations

import argparse

from shard_server.pointer import read_pointer, write_pointer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = sub.add_parser("get", help="print the index URI the pointer names")
    get.add_argument("pointer", help="pointer object, e.g. s3://b/indexes/CURRENT")
    put = sub.add_parser("set", help="point at another index version (one atomic write)")
    put.add_argument("pointer", help="pointer object, e.g. s3://b/indexes/CURRENT")
    put.add_argument("--to", required=True, dest="target", metavar="INDEX_URI",
                     help="the index version root to serve, e.g. s3://b/indexes/v2")
    put.add_argument("--no-check", action="store_true",
                     help="do not require the target's manifest.json to exist")


def run(args: argparse.Namespace) -> int:
    if args.action == "get":
        print(read_pointer(args.pointer))
        return 0
    write_pointer(args.pointer, args.target, check=not args.no_check)
    print(f"{args.pointer} -> {args.target.strip()}")
    return 0
