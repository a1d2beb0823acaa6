"""Fuzz tests: how many inputs each one tried is printed at the end of the run."""

from __future__ import annotations

import os
from collections import Counter

import pytest

TRIED: Counter[str] = Counter()


def examples(default: int) -> int:
    """``CBIR_FUZZ_EXAMPLES`` scales every fuzz test (the default keeps CI well under 90 s)."""
    return int(os.environ.get("CBIR_FUZZ_EXAMPLES") or default)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TRIED:
        terminalreporter.write_sep("-", "fuzz inputs tried")
        for name, n in sorted(TRIED.items()):
            terminalreporter.write_line(f"{name}: {n}")
        terminalreporter.write_line(f"total: {sum(TRIED.values())}")
