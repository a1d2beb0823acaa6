"""The layering in docs/architecture.md, enforced: cbir/ never imports the jobs or servers, and
imports grpc/pyspark only in cbir/rpc/, cbir/client.py and cbir/cli.py; the shard server never
needs torch or pyspark."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("jobs", "shard_server", "coordinator", "web")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_core_never_imports_jobs_or_servers() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _files("cbir")
        if p.name != "cli.py"
        for n in _imports(p)
        if _top(n) in UPPER
    ]
    assert not offenders, offenders


def test_core_imports_grpc_and_spark_only_in_adapters() -> None:
    allowed = {ROOT / "cbir" / "cli.py", ROOT / "cbir" / "client.py"}
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _files("cbir")
        if p not in allowed and (ROOT / "cbir" / "rpc") not in p.parents
        for n in _imports(p)
        if _top(n) in ("grpc", "grpc_health", "grpc_reflection", "pyspark")
    ]
    assert not offenders, offenders


def test_shard_server_needs_no_torch_or_spark() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _files("shard_server")
        for n in _imports(p)
        if _top(n) in ("torch", "torchvision", "pyspark", "PIL", "coordinator", "jobs")
        or n.startswith("cbir.embedding")
    ]
    assert not offenders, offenders


def test_servers_do_not_import_each_other() -> None:
    pairs = [("shard_server", "coordinator"), ("coordinator", "shard_server"),
             ("coordinator", "jobs"), ("jobs", "coordinator"), ("jobs", "shard_server")]
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for src, dst in pairs
        for p in _files(src)
        for n in _imports(p)
        if _top(n) == dst
    ]
    assert not offenders, offenders


def test_web_uses_only_the_core_and_needs_no_torch() -> None:
    """web/ talks to the coordinator through cbir.client: no server or job internals, no
    model (its image has no torch), no Spark."""
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _files("web")
        for n in _imports(p)
        if _top(n) in ("coordinator", "shard_server", "jobs", "torch", "torchvision", "pyspark")
        or n.startswith("cbir.embedding")
    ]
    assert _files("web") and not offenders, offenders


def test_product_never_imports_demo_bench_or_tests() -> None:
    """Demo, benchmark and test helpers stay out of what servers and jobs import (and so out of
    the images); only the CLI's lazy `demo` dispatch names the demo package."""
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for pkg in ("cbir", *UPPER)
        for p in _files(pkg)
        if p != ROOT / "cbir" / "cli.py"
        for n in _imports(p)
        if _top(n) in ("demo", "bench", "tests")
    ]
    assert not offenders, offenders
