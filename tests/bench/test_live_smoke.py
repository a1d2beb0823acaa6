"""``python -m bench live --smoke``: the real runner, real servers with a write-ahead log, tiny
data. Checks the JSON document's shape and that the figures are sane; never asserts on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_live_smoke(tmp_path: Path) -> None:
    out = tmp_path / "live.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "live", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = json.loads(out.read_text())["benchmarks"]["live"]
    assert "error" not in live, live
    writes = live["writes"]
    assert writes["by_vector_1"]["upserts_per_s"] > 0
    assert writes["by_vector_64"]["items"] == 4 * writes["by_vector_1"]["items"]
    for batch in (1, 8):  # by image: the coordinator embeds with the real model
        assert writes[f"by_image_{batch}"]["items"] == 8
        assert writes[f"by_image_{batch}"]["upserts_per_s"] > 0
    lag = writes["visibility_lag"]
    assert lag["samples"] == 10 and 0 < lag["p50_ms"] <= lag["p99_ms"]
    search = live["delta_search"]
    assert search["none"]["qps"] > 0
    assert search["delta_0"]["qps"] > 0 and search["delta_1000"]["qps_vs_none"] > 0
