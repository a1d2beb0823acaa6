"""``cbir query``: query a coordinator by image file or image id, or many queries from a file
(``--batch FILE``, see ``cbir.query_batch``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from cbir.client import CoordinatorClient, SearchResult
from cbir.options import add_options, build, option
from cbir.query_batch import chunks, read_batch
from cbir.rpc.security import add_security_arguments, client_security_from_args


@dataclass(frozen=True)
class QueryOptions:
    coordinator: str = option(required=True, metavar="HOST:PORT", help="the coordinator")
    k: int = option(10, positive=True, aliases=("-k",), help="number of hits")
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
    what.add_argument("--batch", metavar="FILE",
                      help="many queries in one request: JSON Lines ({\"vector\": [...]} | "
                           "{\"image_id\": N} | {\"image\": \"path\"} per line) or a .npy "
                           "float32 matrix; one result per query")
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


def format_batch(results: list[SearchResult], as_json: bool) -> str:
    """One JSON line per query (``query`` = its 0-based line/row), or a table per query; a
    failed query is its ``error_code`` and ``error``."""
    out = []
    for number, result in enumerate(results):
        if as_json:
            out.append(json.dumps({"query": number, **to_json(result)}))
        elif not result.ok:
            out.append(f"query {number}: {result.error_code}: {result.error}")
        else:
            out.append(f"query {number}:\n{format_table(result)}")
    return "\n".join(out)


def run_batch(client: CoordinatorClient, opts: QueryOptions, common: dict[str, Any],
              path: str) -> str:
    queries = read_batch(path)  # a bad file fails before anything is sent
    results: list[SearchResult] = []
    for chunk in chunks(queries):
        results.extend(client.search_batch(chunk, opts.k,
                                           exclude_query_image=opts.exclude_self, **common))
    return format_batch(results, opts.json)


def run(args: argparse.Namespace) -> int:
    opts: QueryOptions = build(QueryOptions, args)
    common: dict[str, Any] = {"nprobe": opts.nprobe, "ef_search": opts.ef_search,
                              "timeout_s": opts.timeout, "filter": opts.filter}
    with CoordinatorClient(
        opts.coordinator, timeout_s=opts.timeout, security=client_security_from_args(args)
    ) as client:
        if args.batch is not None:
            print(run_batch(client, opts, common, args.batch))
            return 0
        if args.image_id is not None:
            result = client.search_id(args.image_id, opts.k,
                                      exclude_query_image=opts.exclude_self, **common)
        else:
            result = client.search_image(args.image, opts.k, **common)
    print(json.dumps(to_json(result)) if opts.json else format_table(result))
    return 0
