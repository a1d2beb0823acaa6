"""``python -m bench filter --smoke``: the real system on tiny data; the JSON's shape and sane
figures, never speed (docs/filters.md has the measured ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_filter_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "filter", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=420, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["benchmarks"]["filter"]
    assert "error" not in result, result
    filters = result["filters"]
    assert set(filters) == {"none", "50%", "10%", "1%", "0.1%"}
    for figures in filters.values():
        assert 0.9 <= figures["recall@10"] <= 1.0  # exact below 2 %, tuned IVF above
        assert figures["load"]["qps"] > 0 and figures["p50_ms"] <= figures["p99_ms"]
    zipf = result["zipf"]
    for side in ("cache_off", "cache_on"):
        for kind in ("by_vector", "by_image_id"):
            assert zipf[side][kind]["queries"] > 0 and zipf[side][kind]["qps"] > 0
            cpu = zipf[side][kind]["cpu_ms_per_query"]
            assert set(cpu) == {"clients", "coordinator", "shards", "total"} and cpu["total"] > 0
    for kind in ("by_vector", "by_image_id"):
        # Every repeat in the stream is a hit: the hit rate is the stream's repeat share.
        assert abs(zipf["cache_on"][kind]["hit_rate"] - zipf["stream_repeat_share"]) < 0.03
        assert 0.5 < zipf["stream_repeat_share"] < 1
        assert "hit_rate" not in zipf["cache_off"][kind]
    assert set(result["targets"]) >= {"zipf_cache_qps_vs_off_by_vector",
                                      "filtered_recall@10_min"}
