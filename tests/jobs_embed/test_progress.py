"""Progress in the job's units with rate and ETA; plain lines (no bar redraws) when the
stream is not a terminal, at most one per interval."""

from __future__ import annotations

import io

import pytest

from jobs import progress as progress_mod
from jobs.progress import Progress


def test_not_a_terminal_gets_few_plain_lines_in_images() -> None:
    out = io.StringIO()  # isatty() is False, like Kubernetes logs
    with Progress(1000, "img", "backfill", stream=out) as progress:
        for done in range(0, 1001, 10):
            progress(done)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 3, lines  # the start, the end; nothing between in < 5 s
    assert lines[0].startswith("backfill:   0%") and "0/1000" in lines[0]
    assert "1000/1000" in lines[-1] and "img/s" in lines[-1]


def test_one_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "LINE_INTERVAL_S", 0.0)
    out = io.StringIO()
    with Progress(3, "shard", "build-index", stream=out) as progress:
        for done in (1, 2, 3):
            progress(done)
    lines = out.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines][:4] == [
        "build-index:   0%", "build-index:  33%", "build-index:  67%", "build-index: 100%"]
    assert "<" in lines[1]  # elapsed<remaining: the ETA


def test_disabled_writes_nothing() -> None:
    out = io.StringIO()
    with Progress(5, "img", "backfill", enabled=False, stream=out) as progress:
        progress(5)
    assert out.getvalue() == ""
