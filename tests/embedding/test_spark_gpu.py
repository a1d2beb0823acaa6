"""Spark GPU scheduling for the backfill: the resource conf a cluster gets on CUDA, the shipped
discovery script's output, and how a task picks its device (real Spark task contexts; the
CUDA binding itself needs GPUs Spark assigned, so here the no-GPU paths are checked)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from jobs.embed import gpu


def test_cluster_on_cuda_asks_one_gpu_per_task() -> None:
    conf = gpu.spark_gpu_conf("cuda", "spark://10.0.0.1:7077")
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.discoveryScript"].endswith("gpu_discovery.sh")
    assert os.access(conf["spark.executor.resource.gpu.discoveryScript"], os.X_OK)
    half = gpu.spark_gpu_conf("cuda:0", "k8s://https://api:6443", tasks_per_gpu=2)
    assert half["spark.task.resource.gpu.amount"] == "0.5"
    assert gpu.spark_gpu_conf("cpu", "spark://h:7077") == {}
    assert gpu.spark_gpu_conf(None, "yarn") == {}
    assert gpu.spark_gpu_conf("cuda", "local[4]") == {}  # local mode schedules no resources


@pytest.mark.parametrize(("visible", "expected"), [("2,3", ["0", "1"]), ("", [])])
def test_discovery_script_reports_visible_gpus(visible: str, expected: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = visible
    if not visible and subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("needs CUDA absent: nvidia-smi is present, the count is the machine's")
    out = subprocess.run([str(gpu.DISCOVERY_SCRIPT)], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": expected}


def test_task_device_outside_spark_keeps_the_configured_device() -> None:
    assert gpu.task_device(None) is None
    assert gpu.task_device("cpu") == "cpu"
    assert gpu.task_device("cuda:1") == "cuda:1"  # an explicit GPU is the user's choice
    assert gpu.task_device("cuda") == "cuda"  # no task context, no GPU list: unchanged


@pytest.mark.spark
def test_task_device_inside_real_spark_tasks(spark: object) -> None:
    """In real Spark tasks without GPU resources, a bare "cuda" stays "cuda" (one visible GPU
    or none) and cpu stays cpu: the binding only happens when Spark assigned a GPU."""
    import torch

    from jobs.embed.gpu import task_device

    sc = spark.sparkContext  # type: ignore[attr-defined]
    seen = sc.parallelize(range(4), 4).map(
        lambda _: (task_device("cpu"), task_device("cuda"))).collect()
    count = torch.cuda.device_count()
    if count <= 1:
        assert set(seen) == {("cpu", "cuda")}
    else:  # local mode on a multi-GPU machine: spread by partition id
        assert [d for _, d in seen] == [f"cuda:{p % count}" for p in range(4)]
