"""The web image has no torch, Spark or server internals: importing the app must not need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_web_app_imports_without_torch_spark_or_servers() -> None:
    code = ("import sys, web.app, web.cli; import cbir.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'pyspark', 'coordinator', 'shard_server', 'jobs')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
