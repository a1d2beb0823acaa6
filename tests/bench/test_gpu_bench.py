"""``python -m bench gpu`` needs CUDA: without it, one clear line and exit code 2, at once
(before it seeds S3 or starts Spark); with it, the GPU machine runs the real thing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_fails_fast_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("needs CUDA absent: this machine has a GPU (bench gpu runs for real)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert time.monotonic() - started < 60


def test_sampler_summary_and_jpegs() -> None:
    from bench.gpu import GpuSampler, make_jpegs

    sampler = GpuSampler()
    assert sampler.summary() == {"samples": 0}
    sampler.samples = [(50.0, 1000.0), (100.0, 3000.0)]
    assert sampler.summary() == {"samples": 2, "util_mean_pct": 75.0, "util_max_pct": 100.0,
                                 "memory_max_mib": 3000.0}
    jpegs = make_jpegs(30)
    assert len(jpegs) == 30 and all(j[:2] == b"\xff\xd8" for j in jpegs)
