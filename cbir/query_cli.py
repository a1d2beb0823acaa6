"""``cbir query``: query a coordinator by image file or image id."""

from __future__ import annotations

import argparse
import json

from cbir.client import CoordinatorClient, SearchResult
from cbir.errors import InvalidArgument
from cbir.rpc.security import add_security_arguments, client_security_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("image", nargs="?", metavar="IMAGE_PATH", help="query image file")
    what.add_argument("--image-id", type=int, metavar="ID", help="query by an indexed image")
    parser.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    parser.add_argument("--exclude-self", action="store_true",
                        help="with --image-id: leave the query image out of the hits")
    parser.add_argument("--nprobe", type=int, default=0, help="IVF lists probed (0 = default)")
    parser.add_argument("--ef-search", type=int, default=0, help="HNSW efSearch (0 = default)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds before giving up (default 10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_security_arguments(parser, server=False)


def format_table(result: SearchResult) -> str:
    lines = [f"{'rank':>4}  {'score':>9}  {'image_id':>19}  {'shard':>5}  key"]
    for rank, hit in enumerate(result.hits, 1):
        lines.append(
            f"{rank:>4}  {hit.score:>9.4f}  {hit.image_id:>19}  {hit.shard:>5}  {hit.key}"
        )
    if not result.hits:
        lines.append("(no hits)")
    if result.partial:
        shards = ", ".join(str(s) for s in result.failed_shards)
        lines.append(f"PARTIAL ANSWER: shard(s) {shards} did not answer")
    lines.append(f"index {result.index_version or '?'}  metric {result.metric or '?'}  "
                 f"request {result.request_id}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise InvalidArgument(f"--k must be positive, got {args.k}")
    if args.timeout <= 0:
        raise InvalidArgument(f"--timeout must be positive, got {args.timeout}")
    common = {"nprobe": args.nprobe, "ef_search": args.ef_search, "timeout_s": args.timeout}
    with CoordinatorClient(
        args.coordinator, timeout_s=args.timeout, security=client_security_from_args(args)
    ) as client:
        if args.image_id is not None:
            result = client.search_id(args.image_id, args.k,
                                      exclude_query_image=args.exclude_self, **common)
        else:
            result = client.search_image(args.image, args.k, **common)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_table(result))
    return 0
