"""``cbir build-index --train-device auto|cpu|cuda``: IVF k-means on the GPU where faiss-gpu
sees one, the CPU otherwise; asking for CUDA without one is one clear line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from cbir.errors import FailedPrecondition
from jobs.build_index import train_device
from tests.build_index.fixtures import keys_for, random_vectors, table, write_run

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(train_device.gpu_count() == 0, reason="needs CUDA (faiss-gpu)")


def test_auto_is_cpu_without_a_gpu_and_cuda_is_refused() -> None:
    if train_device.gpu_count() > 0:
        assert train_device.resolve("auto") == "cuda"
        return
    assert train_device.resolve("auto") == "cpu"
    with pytest.raises(FailedPrecondition, match="sees no GPU"):
        train_device.resolve("cuda")


def test_cpu_training_trains_the_ivf() -> None:
    data = random_vectors(2000, 32)
    index = faiss.index_factory(32, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    assert train_device.train(index, data, "cpu") == "cpu" and index.is_trained


def test_cli_train_device_cuda_without_gpu_exits_2(tmp_path: Path) -> None:
    if train_device.gpu_count() > 0:
        pytest.skip("needs CUDA absent: this machine has a GPU")  # the CUDA test covers it
    vectors = random_vectors(300, 16)
    write_run(str(tmp_path / "emb"), table(keys_for(300), vectors))
    proc = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "build-index", "--embeddings", str(tmp_path / "emb"),
         "--output", str(tmp_path / "ix"), "--shards", "1", "--index", "IVF8,Flat",
         "--engine", "sequential", "--train-device", "cuda"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--train-device cuda" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@needs_cuda
def test_gpu_trained_ivf_is_a_cpu_index_that_searches() -> None:
    data = random_vectors(20_000, 64)
    index = faiss.index_factory(64, "IVF256,PQ16", faiss.METRIC_INNER_PRODUCT)
    assert train_device.train(index, data, "cuda") == "cuda" and index.is_trained
    index.add(data)
    restored = faiss.deserialize_index(faiss.serialize_index(index))  # no GPU part in it
    faiss.extract_index_ivf(restored).nprobe = 32
    _, found = restored.search(data[:50], 1)
    assert float(np.mean(found[:, 0] == np.arange(50))) > 0.8
