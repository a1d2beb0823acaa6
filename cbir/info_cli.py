"""``cbir info``: what an embeddings run, an index version, an index pointer or a live cluster
holds, read from the manifests the jobs write (``cbir.schema``) and the coordinator's Info RPC.

``cbir info URI`` tells the three kinds apart by their marker object: ``_MANIFEST.json`` (an
embeddings run), ``manifest.json`` (an index version), else a small object naming an index
version (a pointer, as ``cbir index-pointer`` writes). ``--json`` prints the same facts as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cbir import index_layout, storage
from cbir.errors import InvalidArgument, NotFound
from cbir.index_pointer import read_pointer
from cbir.options import add_options, build, option
from cbir.rpc.security import add_security_arguments, client_security_from_args
from cbir.schema import (
    EMBED_MANIFEST,
    INDEX_MANIFEST,
    EmbedManifest,
    IndexManifest,
    ShardManifest,
    read_manifest,
)


@dataclass(frozen=True)
class InfoOptions:
    json: bool = option(False, help="print JSON instead of text")
    sample_seconds: float = option(1.0, positive=True, metavar="S",
                                   help="with --coordinator: QPS is measured over this window")
    timeout: float = option(10.0, positive=True, metavar="S",
                            help="with --coordinator: seconds before giving up on a call")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("uri", nargs="?", metavar="URI",
                      help="an embeddings run, an index version or an index pointer "
                           "(path or s3://)")
    what.add_argument("--coordinator", metavar="HOST:PORT", help="a live cluster's coordinator")
    add_options(parser, InfoOptions)
    add_security_arguments(parser, server=False)


# ------------------------------------------------------------------ stored things


def tree_bytes(uri: str) -> int:
    """Total size of the objects under ``uri`` (0 when there are none)."""
    fs, path = storage.filesystem(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sum(f.size or 0 for f in fs.get_file_info(selector) if f.type == pafs.FileType.File)


def errors_by_reason(uri: str, manifest: EmbedManifest) -> dict[str, int]:
    if not manifest.error_parts:
        return {}
    fs, _ = storage.filesystem(uri)
    paths = [storage.filesystem(storage.join(uri, part))[1] for part in manifest.error_parts]
    reasons = pq.read_table(paths, filesystem=fs, columns=["reason"]).column("reason")
    counts = pc.value_counts(reasons).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}


def describe_embeddings(uri: str) -> dict[str, Any]:
    m = read_manifest(storage.join(uri, EMBED_MANIFEST), EmbedManifest)
    return {"kind": "embeddings", "uri": uri, "model": m.model, "model_version": m.model_version,
            "dim": m.dim, "images": m.num_images, "errors": m.num_errors,
            "errors_by_reason": errors_by_reason(uri, m), "parts": len(m.parts),
            "input": m.input, "bytes": tree_bytes(uri)}


def describe_shard(uri: str, shard: int) -> dict[str, Any]:
    m = read_manifest(index_layout.shard_file(uri, shard, INDEX_MANIFEST), ShardManifest)
    return {"shard": shard, "count": m.count, "recall_at_10": m.recall_at_10,
            "bytes": tree_bytes(index_layout.shard_uri(uri, shard))}


def describe_index(uri: str) -> dict[str, Any]:
    m = read_manifest(index_layout.index_manifest_uri(uri), IndexManifest)
    return {"kind": "index", "uri": uri, "index_version": m.index_version,
            "model": m.model, "model_version": m.model_version, "dim": m.dim,
            "metric": m.metric, "factory": m.factory, "count": m.count,
            "recall_at_10": m.recall_at_10, "embeddings": m.embeddings,
            "shards": [describe_shard(uri, s) for s in range(m.num_shards)],
            "bytes": tree_bytes(uri)}


def read_pointer_target(uri: str) -> str:
    """The index URI a pointer object names; a clear error when ``uri`` is no pointer."""
    neither = (f"{uri} is neither an embeddings run ({EMBED_MANIFEST}), an index version "
               f"({INDEX_MANIFEST}) nor an index pointer")
    if not storage.is_s3(uri) and Path(uri).is_dir():
        raise InvalidArgument(neither)
    try:
        return read_pointer(uri)  # the servers' own check of a pointer object
    except NotFound as exc:
        raise NotFound(f"nothing at {uri}") from exc
    except InvalidArgument as exc:
        raise InvalidArgument(neither) from exc


def describe_uri(uri: str) -> dict[str, Any]:
    if storage.exists(storage.join(uri, EMBED_MANIFEST)):
        return describe_embeddings(uri)
    if storage.exists(index_layout.index_manifest_uri(uri)):
        return describe_index(uri)
    target = read_pointer_target(uri)
    return {"kind": "pointer", "uri": uri, "target": target, "index": describe_index(target)}


# ------------------------------------------------------------------ a live cluster


def describe_cluster(args: argparse.Namespace, opts: InfoOptions) -> dict[str, Any]:
    from cbir.client import CoordinatorClient

    with CoordinatorClient(args.coordinator, timeout_s=opts.timeout,
                           security=client_security_from_args(args)) as client:
        first, t0 = client.info(), time.monotonic()
        time.sleep(opts.sample_seconds)
        info, t1 = client.info(), time.monotonic()
    shards = [{"shard": s, "live_replicas": info.live_replicas.get(s, 0),
               "replicas": info.replicas.get(s, 0), "count": info.shard_counts.get(s),
               "index_version": info.shard_index_versions.get(s)}
              for s in range(info.num_shards)]
    qps = (info.requests_served - first.requests_served) / max(t1 - t0, 1e-9)
    return {"kind": "cluster", "coordinator": args.coordinator,
            "index_version": info.index_version, "model": info.model,
            "model_version": info.model_version, "dim": info.dim, "metric": info.metric,
            "count": sum(s["count"] or 0 for s in shards), "qps": round(qps, 2),
            "requests_served": info.requests_served, "shards": shards,
            # what a --filter may name (docs/filters.md)
            "filter_columns": [{"name": n, "type": t} for n, t in info.metadata_columns.items()]}


# ------------------------------------------------------------------ output


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


def render(report: dict[str, Any], indent: str = "") -> str:
    """Aligned ``key: value`` lines; lists of rows (shards) become small tables."""
    lines: list[str] = []
    for key, value in report.items():
        if isinstance(value, dict) and value and key == "index":
            lines += [f"{indent}{key}:", render(value, indent + "  ")]
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            lines += [indent + "  " + "  ".join(f"{k}={_cell(k, v)}" for k, v in row.items())
                      for row in value]
        else:
            lines.append(f"{indent}{key + ':':<17} {_cell(key, value)}")
    return "\n".join(lines)


def _cell(key: str, value: Any) -> str:
    if key == "bytes" and isinstance(value, int):
        return _human_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    opts: InfoOptions = build(InfoOptions, args)
    report = describe_cluster(args, opts) if args.coordinator else describe_uri(args.uri)
    print(json.dumps(report, indent=2) if opts.json else render(report))
    return 0
