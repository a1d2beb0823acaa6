"""The container image definition, checked without a Docker engine: stages and targets, non-root,
build context; and the image entrypoint run for real (the cbir CLI, and a real Spark
KubernetesExecutorBackend JVM started from the installed pyspark jars the way an executor pod
starts it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.deploy.manifests import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def _stages() -> dict[str, list[str]]:
    """stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if match:
            current = stages.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        else:
            current.append(line)
    return stages


def _chain(stages: dict[str, list[str]], name: str) -> list[list[str]]:
    """A stage and the stages it is built FROM, nearest first."""
    out = []
    while name in stages:
        out.append(stages[name])
        name = stages[name][0].split()[1]
    return out


@pytest.mark.parametrize("target", ["server", "coordinator", "jobs", "web"])
def test_targets_run_as_non_root(target: str) -> None:
    chain = _chain(_stages(), target)
    assert chain, f"no stage {target}"
    users = [ln.split()[1] for stage in chain for ln in stage if ln.upper().startswith("USER ")]
    assert users and users[0].split(":")[0] not in ("0", "root")
    lines = [ln for stage in chain for ln in stage]
    assert any(ln.startswith("ENTRYPOINT") for ln in lines)


def test_each_target_installs_the_right_extras() -> None:
    stages = _stages()
    installs = {name: " ".join(ln for ln in lines if "pip install -c constraints.txt" in ln)
                for name, lines in stages.items()}
    assert installs["build-server"].endswith(" .")  # core only: no torch in the shard server
    assert '".[embed]"' in installs["build-coordinator"]
    assert '".[embed,spark]"' in installs["build-jobs"]
    assert installs["build-web"].endswith('".[web]"')  # FastAPI + Pillow, no torch
    assert any("openjdk-17-jre-headless" in ln for ln in stages["jobs"])


def test_copied_files_exist_and_pass_dockerignore() -> None:
    allowed = [ln[1:].rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for stage in _stages().values():
        for line in stage:
            if not line.startswith("COPY") or "--from=" in line:
                continue
            sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert any(src == a or src.startswith(a + "/") for a in allowed), \
                    f"COPY {src}: excluded from the build context by .dockerignore"


def test_entrypoint_runs_the_cli() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(ENTRYPOINT), "--help"], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "serve-shard" in out.stdout and "backfill" in out.stdout


@pytest.mark.slow
@pytest.mark.spark
def test_entrypoint_starts_a_spark_executor_backend() -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no Java on this machine (Spark needs Java 17)")
    import pyspark

    closed = free_port()  # nothing listens there: the executor must try and fail to reach it
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
        "JAVA_HOME": str(Path(java).resolve().parents[1]),
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        # What Spark's ExecutorPodsAllocator puts into an executor pod's environment:
        "SPARK_EXECUTOR_MEMORY": "256m", "SPARK_EXECUTOR_ID": "1", "SPARK_EXECUTOR_CORES": "1",
        "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{closed}",
        "SPARK_APPLICATION_ID": "spark-cbir-test", "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
        "SPARK_RESOURCE_PROFILE_ID": "0", "SPARK_EXECUTOR_POD_NAME": "cbir-backfill-exec-1",
        "SPARK_JAVA_OPT_0": "-XX:+PrintCommandLineFlags",
        "SPARK_JAVA_OPT_1": "-Dspark.network.timeout=5s",
    }
    out = subprocess.run(["bash", str(ENTRYPOINT), "executor"], capture_output=True, text=True,
                         env=env, timeout=180, check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "KubernetesExecutorBackend: Started daemon" in log, log[-3000:]
    assert "-XX:+PrintCommandLineFlags" in log and "-XX:MaxHeapSize=268435456" in log
    assert f"Failed to connect to /127.0.0.1:{closed}" in log, log[-3000:]
