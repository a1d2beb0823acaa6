"""``python -m bench all [--quick] [--only NAME,...] [--out FILE.json]``

Runs each benchmark (a module ``bench.<name>`` exposing ``run(quick: bool) -> dict``) in its own
child process, so one that crashes, hangs past its time limit or leaks threads cannot spoil the
others: it reports ``{"error": ...}`` instead. Prints one JSON document on stdout (and to
``--out``), and a short table of the headline figures on stderr.

``python -m bench NAME [--quick]`` runs one benchmark the same way; ``scale`` (the largest
build this machine holds, ``bench/scale.py``) runs only when named. ``python -m bench gpu``
(``bench/gpu.py``, its own flags) needs a CUDA machine, so ``all`` never runs it; without CUDA
it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from bench import harness

BENCHMARKS = ("embed", "search", "peers", "balance", "build", "filter", "live", "workers")
# Not in "all": the largest build this machine holds (tens of minutes at full size).
HEAVY = ("scale",)
GPU_ONLY = "gpu"  # not in "all": it needs CUDA and takes the whole machine
CHILD = "_one"  # internal subcommand: run one benchmark in this process, JSON on stdout

log = logging.getLogger("bench")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("all", *BENCHMARKS, *HEAVY, GPU_ONLY, CHILD),
                        help="'all' or one benchmark name ('gpu': see bench/gpu.py)")
    parser.add_argument("name", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CI-sized data and load periods")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data, for the test suite (implies --quick; figures mean "
                             "nothing)")
    parser.add_argument("--only", default="", help="comma-separated subset of: "
                        + ",".join(BENCHMARKS))
    parser.add_argument("--out", help="also write the JSON document to this file")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get(
        "CBIR_BENCH_TIMEOUT_S", "420")), help="seconds each benchmark may take (default 420)")
    parser.add_argument("-v", "--verbose", action="store_true", help="benchmark logs on stderr")
    return parser


def _run_in_process(name: str, quick: bool) -> dict[str, Any]:
    return dict(importlib.import_module(f"bench.{name}").run(quick))


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object printed last on stdout (a table or log lines may precede it)."""
    start = text.find("{")
    while start != -1:
        try:
            doc = json.loads(text[start:])
            if isinstance(doc, dict):
                return doc
        except json.JSONDecodeError:
            pass
        start = text.find("\n{", start + 1)
        start = start + 1 if start != -1 else -1
    raise ValueError("no JSON object in the output")


def _run_child(name: str, quick: bool, timeout_s: float, verbose: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", CHILD, name, *(["--quick"] if quick else [])]
    if verbose:
        cmd.append("--verbose")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if verbose else
                              subprocess.PIPE, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": round(timeout_s, 1)}
    wall_s = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-1500:].strip()
        return {"error": f"exit code {proc.returncode}: {tail}", "wall_s": wall_s}
    try:
        result = _last_json(proc.stdout)
    except ValueError as exc:
        return {"error": str(exc), "wall_s": wall_s}
    result.setdefault("wall_s", wall_s)
    return result


def _child_main(name: str, quick: bool) -> int:
    try:
        result = _run_in_process(name, quick)
    except Exception as exc:  # reported as this benchmark's result, the parent carries on
        log.exception("benchmark %s failed", name)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result, default=_json_default) + "\n")
    return 0


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _selected(args: argparse.Namespace) -> list[str]:
    if args.target != "all":
        return [args.target]
    if not args.only:
        return list(BENCHMARKS)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"python -m bench: unknown benchmark(s): {', '.join(unknown)}")
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [GPU_ONLY]:
        from bench import gpu

        return gpu.main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.smoke:
        args.quick = True
        os.environ[harness.SMOKE_ENV] = "1"  # inherited by the benchmark processes
    if args.target == CHILD:
        return _child_main(args.name, args.quick)
    doc: dict[str, Any] = {"quick": args.quick, "smoke": args.smoke,
                           "machine": harness.machine_info(),
                           "benchmarks": {}}
    for name in _selected(args):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        doc["benchmarks"][name] = _run_child(name, args.quick, args.timeout, args.verbose)
    doc["targets"] = collect_targets(doc["benchmarks"])
    text = json.dumps(doc, indent=1, default=_json_default)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stderr.write(harness.render_table(doc))
    return 0


def collect_targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every benchmark's ``targets`` entries, prefixed with its name, plus the one that spans
    two benchmarks (shard server vs the best peer, on the identical data set)."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        for key, value in (result.get("targets") or {}).items():
            out[f"{name}.{key}"] = value
    search, peers = results.get("search", {}), results.get("peers", {})
    cross = _shard_server_vs_peers(search, peers)
    if cross is not None:
        out["search+peers.shard_server_qps_vs_best_peer"] = cross
    batched = _batched_shard_server_vs_peers(search, peers)
    if batched is not None:
        out["search+peers.batched_shard_server_qps_vs_best_peer_any_mode"] = batched
    return out


def _batched_shard_server_vs_peers(search: dict[str, Any], peers: dict[str, Any]
                                   ) -> dict[str, Any] | None:
    """The shard server with B queries per request (its batch API) against every peer in ITS
    best mode (batched where it has a batch API), on the identical data set and recall."""
    glove = search.get("glove") or {}
    best_peer_qps = peers.get("best_peer_any_mode_qps")
    if not glove.get("batched") or not best_peer_qps:
        return None
    if glove["dataset"]["name"] != peers["dataset"]["name"]:
        return harness.target(None, ">=", best_peer_qps, "not comparable: different data sets")
    figures = [(key, pair["b_shard_server"]) for key, pair in glove["batched"].items()
               if pair.get("b_shard_server")
               and pair["b_shard_server"].get("recall@10", 0) >= harness.RECALL_TARGET]
    if not figures:
        return None
    key, best = max(figures, key=lambda kv: kv[1]["qps"])
    return harness.target(best["qps"], ">=", best_peer_qps, (
        f"shard server QPS with {key} queries per request (recall {best['recall@10']}) vs best "
        f"peer {peers['best_peer_any_mode']} in its best mode at recall >= "
        f"{harness.RECALL_TARGET}"))


def _shard_server_vs_peers(search: dict[str, Any], peers: dict[str, Any]
                           ) -> dict[str, Any] | None:
    glove = search.get("glove") or {}
    if "paths" not in glove or not peers.get("best_peer"):
        return None
    if glove["dataset"]["name"] != peers["dataset"]["name"]:
        return harness.target(None, ">=", peers["best_peer_load_qps"], (
            f"not comparable: search used {glove['dataset']['name']}, peers "
            f"{peers['dataset']['name']} (the --quick run compares them on identical data)"))
    b = glove["paths"]["b_shard_server"]
    if b["recall@10"] < harness.RECALL_TARGET:
        return harness.target(None, ">=", peers["best_peer_load_qps"],
                              f"shard server recall {b['recall@10']} below the matched target")
    return harness.target(
        b["load"]["qps"], ">=", peers["best_peer_load_qps"],
        f"shard server QPS under load (recall {b['recall@10']}) vs best peer "
        f"{peers['best_peer']} in-process QPS under load at recall >= {harness.RECALL_TARGET}")


if __name__ == "__main__":
    sys.exit(main())
