"""``cbir query``: query a coordinator by image file or image id."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from cbir.client import CoordinatorClient, SearchResult
from cbir.options import add_options, build, option
from cbir.rpc.security import add_security_arguments, client_security_from_args


@dataclass(frozen=True)
class QueryOptions:
    coordinator: str = option(required=True, metavar="HOST:PORT", help="the coordinator")
    k: int = option(10, positive=True, help="number of hits")
    exclude_self: bool = option(False,
                                help="with --image-id: leave the query image out of the hits")
    nprobe: int = option(0, non_negative=True, help="IVF lists probed (0 = default)")
    ef_search: int = option(0, non_negative=True, help="HNSW efSearch (0 = default)")
    filter: str = option("", metavar="EXPR",
                         help="only images whose metadata pass EXPR, e.g. \"width >= 640 AND "
                              "label IN ('cat', 'dog')\" (docs/filters.md)")
    timeout: float = option(10.0, positive=True, metavar="S", help="seconds before giving up")
    json: bool = option(False, help="print the result as JSON (image ids also as strings: "
                                    "image_id_str)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("image", nargs="?", metavar="IMAGE_PATH", help="query image file")
    what.add_argument("--image-id", type=int, metavar="ID", help="query by an indexed image")
    add_options(parser, QueryOptions)
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


def to_json(result: SearchResult) -> dict[str, Any]:
    """``SearchResult.to_json()`` plus ``image_id_str`` per hit: ids are 63-bit integers, which
    jq and JavaScript round to 53 bits; the string keeps every digit."""
    data = result.to_json()
    for hit in data["hits"]:
        hit["image_id_str"] = str(hit["image_id"])
    return data


def run(args: argparse.Namespace) -> int:
    opts: QueryOptions = build(QueryOptions, args)
    common: dict[str, Any] = {"nprobe": opts.nprobe, "ef_search": opts.ef_search,
                              "timeout_s": opts.timeout, "filter": opts.filter}
    with CoordinatorClient(
        opts.coordinator, timeout_s=opts.timeout, security=client_security_from_args(args)
    ) as client:
        if args.image_id is not None:
            result = client.search_id(args.image_id, opts.k,
                                      exclude_query_image=opts.exclude_self, **common)
        else:
            result = client.search_image(args.image, opts.k, **common)
    print(json.dumps(to_json(result)) if opts.json else format_table(result))
    return 0
