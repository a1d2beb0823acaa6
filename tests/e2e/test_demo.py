"""The README's first command, for real: `cbir demo` builds and serves the whole system, a
separate `cbir query --json` process queries it, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout_s: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(seen[-40:])}")


def test_demo_serves_real_results_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir.cli", "demo", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = _wait_for_line(proc, r"Press Ctrl-C to stop", timeout_s=600)
        text = "".join(lines)
        accuracy = float(re.search(r"top-1 = original for ([\d.]+)%", text).group(1))  # type: ignore[union-attr]
        print(f"demo: top-1 = original for {accuracy}% of edited-photo queries")
        assert accuracy >= 90.0
        assert "skipped s3://cbir-demo-photos/photos/broken/empty.jpg: empty" in text
        # The live index: the held-back photo, upserted, is the top hit of its own crop; deleted,
        # it is gone.
        print("".join(line for line in lines if "live:" in line))
        assert "top hit of its crop is now itself" in text, text[-3000:]
        assert "gone from the results" in text
        coordinator = re.search(r"serving on (127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]
        web = re.search(r"HTTP/JSON API: (http://127\.0\.0\.1:\d+/)", text).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(web + "api/info", timeout=30) as reply:
            assert json.loads(reply.read())["num_shards"] == 2
        example = next(tmp_path.glob("*-crop.jpg"))
        query = subprocess.run(
            [sys.executable, "-m", "cbir.cli", "query", "--coordinator", coordinator,
             str(example), "--k", "3", "--json"],
            capture_output=True, text=True, timeout=120, check=True,
        )
        answer = json.loads(query.stdout)
        assert answer["partial"] is False and answer["failed_shards"] == []
        original = example.name.removesuffix("-crop.jpg")
        assert answer["hits"][0]["key"].endswith(f"/photos/{original}.jpg")
        assert len(answer["hits"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130  # interrupted: children terminated, nothing left behind
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 6  # 2 shards x 2 replicas + the coordinator + the web server
    crashed = [p.name for p in logs if "Traceback" in p.read_text()]
    assert not crashed, f"servers logged a traceback: {crashed}"
