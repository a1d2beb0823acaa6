"""Every cbir process allocates Arrow memory through glibc (``cbir/__init__.py``): Arrow's bundled
mimalloc kept a shard task's freed chunks and buckets in RSS. The choice is made when pyarrow
loads, so importing cbir first must be enough, and a value set outside must win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs import spark_session

_PROBE = "import cbir, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


@pytest.mark.parametrize(("outside", "expected"), [(None, "system"), ("jemalloc", "jemalloc")])
def test_importing_cbir_first_picks_the_pool(outside: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if outside is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = outside
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == expected


def test_spark_python_workers_get_it_too() -> None:
    conf = spark_session._base_conf("local[2]", verbose=False)
    assert conf["spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL"] == "system"
