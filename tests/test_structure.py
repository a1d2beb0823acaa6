"""Structure rules that keep the code readable: no import cycle between project modules
(function-level imports included) and no function longer than 60 lines. McCabe complexity
(<= 10) is ruff's C901, on in pyproject.toml."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cbir", "jobs", "shard_server", "coordinator", "web", "demo", "bench", "deploy")
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific project module an import names (``a.b.c`` -> ``a.b`` if c is not a
    module), or None for third-party names."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    targets = {_resolve(n, modules) for n in names}
    return {t for t in targets if t is not None and t != module}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (first module repeated at the end), or [] (the standard library's
    topological sorter finds it)."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _imported(m, p, modules) for m, p in modules.items()}
    assert _cycle(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    cycle = _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(set(cycle)) == ["a", "b", "c"] and cycle[0] == cycle[-1]


def test_no_function_over_60_lines() -> None:
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, long
