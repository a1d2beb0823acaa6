"""A real Spark standalone cluster on 127.0.0.1: one master and N workers started from
pyspark's own jars (``spark-class``), on free ports, each worker in its own work directory.

The workers get this process's environment without the S3 location (endpoint, region): the
jobs must ship those to their executors themselves, as on a real cluster. Credentials stay:
executors use their own credential chain.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from tests.conftest import free_port

S3_LOCATION = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass
class Cluster:
    master_url: str
    ui_url: str
    work_dirs: list[Path]
    timings: dict[str, float] = field(default_factory=dict)

    def stages_by_worker(self) -> list[set[int]]:
        """Per worker: the stage ids its executors ran tasks of (from their own logs)."""
        found = []
        for work in self.work_dirs:
            stages: set[int] = set()
            for log in work.rglob("stderr"):
                for line in log.read_text(errors="replace").splitlines():
                    if "Running task" in line and " in stage " in line:
                        stages.add(int(line.split(" in stage ")[1].split(".")[0]))
            found.append(stages)
        return found


def _spark_class() -> str:
    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _wait(what: str, ready: object, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive_workers(ui_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{ui_url}/json", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    except OSError:
        return 0


@contextmanager
def standalone_cluster(root: Path, workers: int = 2) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if k not in S3_LOCATION}
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1",
               PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", "python3"))
    port, ui_port = free_port(), free_port()
    master_url, ui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()

    def start(name: str, *args: str) -> None:
        log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([_spark_class(), *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(ui_port))
        _wait("master", lambda: _port_open(port) and _port_open(ui_port))
        work_dirs = [root / f"worker{i}" for i in range(workers)]
        for i, work in enumerate(work_dirs):
            work.mkdir()
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", master_url,
                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                  "--webui-port", str(free_port()), "--work-dir", str(work))
        _wait("workers", lambda: _alive_workers(ui_url) == workers)
        cluster = Cluster(master_url, ui_url, work_dirs)
        cluster.timings["cluster_start_s"] = round(time.monotonic() - t0, 1)
        yield cluster
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
