"""``cbir upsert`` / ``cbir delete``: write to the live index through a coordinator.

Exit code 0 when every item is "ok", 1 when some item failed (each says why), 2 for bad usage
or a refused request (one line, like every cbir command).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from cbir.client import CoordinatorClient, UpsertSpec, WriteResult
from cbir.errors import InvalidArgument
from cbir.options import add_options, build, option
from cbir.rpc.security import add_security_arguments, client_security_from_args


@dataclass(frozen=True)
class WriteOptions:
    coordinator: str = option(required=True, metavar="HOST:PORT", help="the coordinator")
    timeout: float = option(30.0, positive=True, metavar="S", help="seconds before giving up")
    json: bool = option(False, help='print {"items": [{"key", "image_id", "image_id_str", '
                                    '"status", "reason"}]}')


def add_upsert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", nargs="*", metavar="S3_URI",
                        help="objects to (re)index; the coordinator fetches them")
    parser.add_argument("--image", metavar="PATH", help="upload this file's bytes (with --key)")
    parser.add_argument("--key", metavar="S3_URI", help="the key the --image is indexed under")
    add_options(parser, WriteOptions)
    add_security_arguments(parser, server=False)


def add_delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", nargs="*", metavar="S3_URI", help="images to remove, by key")
    parser.add_argument("--image-id", type=int, nargs="+", action="extend", default=[],
                        metavar="ID", help="images to remove, by id (--image-id ID [ID ...], "
                                           "repeatable)")
    add_options(parser, WriteOptions)
    add_security_arguments(parser, server=False)


def upsert_specs(args: argparse.Namespace) -> list[UpsertSpec]:
    if args.image is not None or args.key is not None:
        if args.image is None or args.key is None or args.keys:
            raise InvalidArgument("--image PATH needs --key S3_URI and no other keys")
        path = Path(args.image)
        if not path.is_file():
            raise InvalidArgument(f"--image: no such file: {args.image}")
        return [UpsertSpec(args.key, image=path.read_bytes())]
    if not args.keys:
        raise InvalidArgument("give S3 URIs to upsert, or --image PATH --key S3_URI")
    return [UpsertSpec(key) for key in args.keys]


def report(results: list[WriteResult], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"items": [r.to_json() for r in results]}))
    else:
        for r in results:
            where = f"shard {r.shard} seq {r.seq}" if r.ok else r.reason
            print(f"{r.status:5}  {r.image_id:>19}  {r.key or '-'}  {where}")
    return 0 if all(r.ok for r in results) else 1


def run_upsert(args: argparse.Namespace) -> int:
    opts: WriteOptions = build(WriteOptions, args)
    specs = upsert_specs(args)
    with CoordinatorClient(opts.coordinator, timeout_s=opts.timeout,
                           security=client_security_from_args(args)) as client:
        return report(client.upsert(specs), opts.json)


def run_delete(args: argparse.Namespace) -> int:
    opts: WriteOptions = build(WriteOptions, args)
    if not args.keys and not args.image_id:
        raise InvalidArgument("give S3 URIs or --image-id ID to delete")
    with CoordinatorClient(opts.coordinator, timeout_s=opts.timeout,
                           security=client_security_from_args(args)) as client:
        return report(client.delete(args.keys, args.image_id), opts.json)
