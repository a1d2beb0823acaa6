"""The model object shared by the backfill and the query path.

``prepare`` (bytes -> uint8 pixels) is pure CPU work that releases the GIL in PIL, so it runs on
a thread pool sized to the cores while the runtime (``runtimes``: torch or ONNX Runtime) embeds
the batch before; the runtime normalises inside its graph, so the batch job and a query go
through exactly the same arithmetic whichever runtime runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, lru_cache

import numpy as np
import torch

from cbir.embedding import models, onnx_export
from cbir.embedding.gpu_decode import DeviceJpegPath, gpu_batch_size
from cbir.embedding.preprocess import Prepared, PreprocessSpec, prepare_bytes
from cbir.embedding.result import EmbedResult
from cbir.embedding.runtimes import OnnxRuntime, Pipeline, Runtime, TorchRuntime, resolve_runtime
from cbir.errors import BadImage, FailedPrecondition
from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.model_names import DEFAULT_MODEL

log = logging.getLogger(__name__)

CPU_BATCH = 32


def cpu_cores() -> int:
    """Cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Embedder:
    """A loaded model + its preprocessing + the runtime that executes it. Thread-safe for
    ``prepare``; call ``embed_*`` from one thread at a time (the runtime already parallelises
    one batch across cores)."""

    def __init__(
        self, spec: models.ModelSpec, pipeline: Pipeline, runtime: Runtime, version: str,
        device: str, limits: Limits = DEFAULT_LIMITS, device_decode: bool | None = None,
    ) -> None:
        # JPEGs decoded on the GPU by default on CUDA; device_decode=True on CPU runs the same
        # code with torchvision's CPU decoder (how the tests check it without a GPU).
        if device_decode is None:
            device_decode = device.startswith("cuda")
        self.name = spec.name
        self.dim = spec.dim
        self.version = version
        self.device = device
        self.runtime = runtime.name
        self.preprocess: PreprocessSpec = spec.preprocess
        self.limits = limits
        self.batch_size = gpu_batch_size(device) if device.startswith("cuda") else CPU_BATCH
        self._pipeline = pipeline
        self._runtime = runtime
        self._device_path: DeviceJpegPath | None = None
        if device_decode and isinstance(runtime, TorchRuntime):
            self._device_path = DeviceJpegPath(self.preprocess, limits, device, self.batch_size,
                                               runtime.run_tensor, self._embed_bytes_cpu)

    @property
    def decodes_on_device(self) -> bool:
        """True on CUDA: ``embed_bytes`` decodes JPEGs on the GPU, so callers should hand it
        the bytes instead of ``prepare``-d pixels."""
        return self._device_path is not None

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        """Decode + preprocess threads, one per core: PIL releases the GIL while decoding."""
        return ThreadPoolExecutor(cpu_cores(), thread_name_prefix=f"decode-{self.name}")

    def prepare(self, data: bytes, for_query: bool = False) -> Prepared:
        """Bytes -> model pixels; raises ``BadImage``. ``for_query`` applies the (lower) query
        limit on decoded pixels."""
        cap = self.limits.max_query_image_pixels if for_query else None
        return prepare_bytes(data, self.preprocess, self.limits, decoded_pixel_cap=cap)

    def try_prepare(self, data: bytes, for_query: bool = False) -> Prepared | BadImage:
        """Like ``prepare`` but returns the error: a bad image must never escape a batch."""
        try:
            return self.prepare(data, for_query)
        except BadImage as exc:
            return exc
        except Exception as exc:  # a decoder bug on hostile bytes is still just a bad image
            return BadImage("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}")

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, dim) float32 L2-normalised."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [pixels[i : i + self.batch_size] for i in range(0, len(pixels), self.batch_size)]
        out = self._runtime.run_batches(batches)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _prepared(self, images: Sequence[bytes], for_query: bool) -> Iterator[Prepared | BadImage]:
        if len(images) == 1:
            return iter([self.try_prepare(images[0], for_query)])
        # Every image is queued at once: the pool keeps decoding while the model embeds the
        # batches already decoded, so the model never waits on a decode it could overlap.
        return self.pool.map(lambda d: self.try_prepare(d, for_query), images)

    def embed_bytes(self, images: Sequence[bytes], for_query: bool = False) -> EmbedResult:
        """Decode + embed; bad images are reported in ``failures``, never raised."""
        if self._device_path is not None:
            return self._device_path.embed_bytes(images, for_query, self.dim)
        return self._embed_bytes_cpu(images, for_query)

    def _embed_bytes_cpu(self, images: Sequence[bytes], for_query: bool) -> EmbedResult:
        ok: list[int] = []
        sizes: list[tuple[int, int]] = []
        failures: list[tuple[int, str, str]] = []
        vectors: list[np.ndarray] = []
        good: list[np.ndarray] = []
        for i, item in enumerate(self._prepared(images, for_query)):
            if isinstance(item, BadImage):
                failures.append((i, item.reason, item.detail))
                continue
            ok.append(i)
            sizes.append(item.size)
            good.append(item.pixels)
            if len(good) == self.batch_size:
                vectors.append(self.embed_pixels(np.stack(good)))
                good = []
        if good:
            vectors.append(self.embed_pixels(np.stack(good)))
        out = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return EmbedResult(out, ok, sizes, failures)


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPrecondition(f"device {device!r} requested but CUDA is not available")
    return device


def set_torch_threads(threads: int | None) -> None:
    """Share the CPU between concurrent workers instead of oversubscribing it (torch now;
    ONNX Runtime sessions created afterwards take the same count)."""
    if threads and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _runtime(name: str, pipeline: Pipeline, spec: models.ModelSpec, version: str,
             device: str) -> Runtime:
    if name == "onnxruntime":
        path = onnx_export.onnx_model(pipeline, spec.name, version, spec.preprocess.input_size)
        return OnnxRuntime(str(path), device, torch.get_num_threads())
    return TorchRuntime(pipeline, device)


@lru_cache(maxsize=4)
def _load(name: str, weights: str | None, device: str, runtime: str) -> Embedder:
    spec = models.model_spec(name)
    path = models.resolve_weights(spec, weights)
    digest = models.file_sha256(path)
    pipeline = Pipeline(spec.build(models.load_state_dict(path)), spec.preprocess.mean,
                        spec.preprocess.std).eval()
    version = models.model_version(name, digest, spec.preprocess)
    engine = _runtime(runtime, pipeline, spec, version, device)
    log.info("loaded %s (version %s) on %s with %s from %s", name, version, device, runtime, path)
    return Embedder(spec, pipeline, engine, version, device)


def load_embedder(
    name: str = DEFAULT_MODEL, weights: str | None = None, device: str | None = None,
    runtime: str = "auto",
) -> Embedder:
    """The embedder for ``name``, built once per process and arguments. ``runtime``: auto
    (CUDA torch on a GPU, ONNX Runtime on CPU when installed), torch or onnxruntime."""
    models.model_spec(name)  # unknown names fail fast with the list of known ones
    threads = os.environ.get("CBIR_TORCH_THREADS")
    if threads:
        set_torch_threads(int(threads))
    dev = resolve_device(device)
    return _load(name, weights, dev, resolve_runtime(runtime, dev))
