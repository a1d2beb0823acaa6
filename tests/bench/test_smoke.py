"""Benchmark smoke test: the real runner, real engines, tiny data. Checks the JSON document's
shape and that measured figures are sane; never asserts on speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import harness
from bench.__main__ import _last_json, collect_targets

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_all_peers_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--only", "peers", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["quick"] is True and doc["machine"]["cpus"] >= 1
    assert set(doc["benchmarks"]) == {"peers"}
    peers = doc["benchmarks"]["peers"]
    assert "error" not in peers, peers
    assert peers["dataset"]["base"] == 5000 and peers["dataset"]["dim"] == 50
    engines = {e["engine"]: e for e in peers["engines"]}
    assert {"faiss-hnsw", "faiss-ivf"} <= set(engines)
    assert not any("error" in e for n, e in engines.items() if n.startswith("faiss")), engines
    for engine in engines.values():
        if "error" in engine:  # a peer that cannot run here is reported, not fatal
            continue
        assert 0.0 <= engine["recall@10"] <= 1.0
        assert all(0.0 <= s["recall"] <= 1.0 for s in engine["tune_sweep"])
        assert engine["single"]["p50_ms"] <= engine["single"]["p99_ms"]
        assert engine["load"]["qps"] > 0 and engine["load"]["queries"] > 0
        assert engine["build_s"] >= 0
    # Exact-within-lists Faiss IVF can always be tuned to the target on 5k vectors.
    assert engines["faiss-ivf"]["recall@10"] >= 0.9
    assert "== peers" in proc.stderr  # the human table


def test_recall_and_percentiles() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, -1, 4]])
    assert harness.recall_at_k(found, truth, k=3) == pytest.approx(3 / 6)
    assert harness.recall_at_k(truth, truth, k=3) == 1.0
    p = harness.percentiles_ms([0.001] * 99 + [0.1])
    assert p["p50_ms"] == pytest.approx(1.0)
    assert 1.0 < p["p99_ms"] <= 100.0
    assert math.isnan(harness.percentiles_ms([])["p50_ms"])


def test_vector_set_holds_queries_out() -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((500, 8)).astype(np.float32)
    data = harness.make_vector_set(raw, n_base=400, n_queries=20, name="t")
    assert data.base.shape == (400, 8) and data.queries.shape == (20, 8)
    base_rows = {row.tobytes() for row in data.base}
    assert not any(q.tobytes() in base_rows for q in data.queries)
    assert np.allclose(np.linalg.norm(data.base, axis=1), 1.0, atol=1e-5)
    assert data.truth.shape == (20, harness.K)


def test_tune_smallest_picks_first_value_reaching_target() -> None:
    value, recall, sweep = harness.tune_smallest([1, 2, 4, 8], lambda v: v / 8)
    assert value == 8 and recall == 1.0 and len(sweep) == 4
    value, _, sweep = harness.tune_smallest([1, 2, 4, 8], lambda v: 0.99)
    assert value == 1 and len(sweep) == 1


def test_runner_helpers() -> None:
    assert _last_json('log line\n{"a": 1}\n') == {"a": 1}
    with pytest.raises(ValueError):
        _last_json("no json here")
    targets = collect_targets({"x": {"targets": {"t": harness.target(1.0, ">=", 0.5, "w")}},
                               "y": {"error": "boom"}})
    assert targets == {"x.t": {"value": 1.0, "target": ">= 0.5", "met": True, "what": "w"}}
    table = harness.render_table({"benchmarks": {"y": {"error": "boom"}}, "targets": targets})
    assert "ERROR: boom" in table and "MET" in table
