"""Where IVF/PQ training runs: ``--train-device auto|cpu|cuda``.

On a GPU (the ``faiss-gpu`` build of the same Faiss), the k-means of an IVF coarse quantizer
runs on the GPU through Faiss's documented hook, a GPU flat index as the IVF's
``clustering_index``; the index itself stays a CPU index (so what is serialised and served is
identical whatever trained it). PQ/OPQ codebooks and factories without an IVF train on the CPU.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from cbir.errors import FailedPrecondition

log = logging.getLogger(__name__)

TRAIN_DEVICES = ("auto", "cpu", "cuda")


def gpu_count() -> int:
    """GPUs Faiss can use (0 with faiss-cpu, which has no get_num_gpus)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve(choice: str) -> str:
    if choice not in TRAIN_DEVICES:
        raise FailedPrecondition(f"--train-device must be one of {', '.join(TRAIN_DEVICES)}")
    if choice == "auto":
        return "cuda" if gpu_count() > 0 else "cpu"
    if choice == "cuda" and gpu_count() == 0:
        raise FailedPrecondition(
            "--train-device cuda: this Faiss sees no GPU (install faiss-gpu of the same "
            "version on a CUDA machine, or use --train-device cpu|auto)")
    return choice


def train(index: faiss.Index, sample: np.ndarray, device: str) -> str:
    """Trains ``index`` in place; returns where its k-means ran ("cuda" or "cpu")."""
    ivf = _ivf_of(index) if device == "cuda" else None
    if ivf is None:
        index.train(sample)
        return "cpu"
    resources = faiss.StandardGpuResources()
    ivf.clustering_index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatL2(ivf.d))
    try:
        index.train(sample)
    finally:
        ivf.clustering_index = None  # type: ignore[assignment]  # no GPU index in the bytes
    log.info("trained the IVF quantizer on the GPU (%d vectors)", len(sample))
    return "cuda"


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # Flat, HNSW, PQ without IVF: nothing for the GPU to cluster
        return None
