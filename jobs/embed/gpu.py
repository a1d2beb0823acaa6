"""Spark GPU scheduling for the backfill: each task binds the GPU Spark assigned to it.

On a cluster (standalone, YARN, Kubernetes) the executors advertise their GPUs through a
discovery script and each task asks for one (``spark.task.resource.gpu.amount``); Spark then
hands the task its GPU's address in ``TaskContext.resources()["gpu"]`` and the task runs on
``cuda:<address>``, so two tasks never share a GPU by accident. Local mode schedules no
resources: there tasks spread over the visible GPUs by partition id.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DISCOVERY_SCRIPT = Path(__file__).with_name("gpu_discovery.sh")


def wants_gpu(device: str | None) -> bool:
    return device is not None and device.startswith("cuda")


def spark_gpu_conf(device: str | None, master: str, gpus_per_executor: int = 1,
                   tasks_per_gpu: int = 1) -> dict[str, str]:
    """Resource conf for a cluster master when the backfill runs on CUDA; {} otherwise."""
    if not wants_gpu(device) or master.startswith("local"):
        return {}
    return {
        "spark.executor.resource.gpu.amount": str(gpus_per_executor),
        "spark.executor.resource.gpu.discoveryScript": str(DISCOVERY_SCRIPT),
        # 1/tasks_per_gpu: one task per GPU by default (a backfill task saturates one).
        "spark.task.resource.gpu.amount": str(1.0 / tasks_per_gpu) if tasks_per_gpu > 1 else "1",
    }


def _assigned_gpu() -> str | None:
    try:
        from pyspark import TaskContext
    except ImportError:  # the sequential engine without pyspark installed
        return None
    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpu = ctx.resources().get("gpu")
    if gpu is None or not gpu.addresses:
        return None
    return str(gpu.addresses[0])


def _partition_gpu() -> str | None:
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return None
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    ctx = TaskContext.get()
    return str(ctx.partitionId() % count) if ctx is not None else None


def task_device(device: str | None) -> str | None:
    """The device this task should embed on: the configured one, with a bare ``cuda`` bound
    to the GPU Spark assigned this task (or, in local mode, one picked by partition id)."""
    if device != "cuda":
        return device  # cpu, None (auto) or an explicit cuda:N the user chose
    index = _assigned_gpu() or _partition_gpu()
    if index is not None:
        log.info("task bound to GPU %s", index)
        return f"cuda:{index}"
    return device
