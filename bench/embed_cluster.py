"""A real one-shard cluster that answers image queries: an index of the real model's name,
version and dim (random unit vectors: the figures are about embedding queries, not about what
they find), ``cbir serve-shard`` and ``cbir serve-coordinator`` as child processes on
127.0.0.1. Used by ``bench.embed`` (query-by-image throughput) and by the hostile-image tests
(the coordinator's RSS is read from /proc)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cluster import (
    COORDINATOR_SERVICE,
    SHARD_SERVICE,
    Processes,
    run_cbir,
    start_shard,
    write_embeddings_run,
    write_topology,
)
from demo.processes import cbir_command, free_port


@dataclass(frozen=True)
class ImageCluster:
    procs: Processes
    address: str  # the coordinator's
    coordinator_pid: int
    num_images: int


def _index(work: Path, model: str, n: int) -> None:
    from cbir.embedding import describe_model

    info = describe_model(model)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, info.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_embeddings_run(str(work / "embeddings"), vectors, name="photos", parts=1,
                         model=info.name, model_version=info.version)
    run_cbir("build-index", "--embeddings", str(work / "embeddings"), "--output",
             str(work / "index"), "--shards", "1", "--index", "Flat", "--engine", "sequential")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (or its peak, ``VmHWM``) in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextmanager
def image_cluster(model: str = "efficientnet_lite0", runtime: str = "auto",
                  num_images: int = 256) -> Iterator[ImageCluster]:
    work = Path(tempfile.mkdtemp(prefix="cbir-image-cluster-"))
    try:
        _index(work, model, num_images)
        with Processes() as procs:
            shard = start_shard(procs, str(work / "index"), 0, "shard-0")
            procs.wait_serving(shard, SHARD_SERVICE)
            topology = write_topology(work / "topology.json", {0: [shard]})
            address = f"127.0.0.1:{free_port()}"
            procs.start("coordinator", cbir_command(
                "serve-coordinator", "--topology", topology, "--host", "127.0.0.1",
                "--port", address.rsplit(":", 1)[1], "--model", model, "--device", "cpu",
                "--runtime", runtime))
            procs.wait_serving(address, COORDINATOR_SERVICE)
            pid = next(p.pid for name, p, _ in procs.children if name == "coordinator")
            yield ImageCluster(procs, address, pid, num_images)
    finally:
        shutil.rmtree(work, ignore_errors=True)
