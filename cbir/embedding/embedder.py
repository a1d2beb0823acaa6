"""The model object shared by the backfill and the query path.

``prepare`` (bytes -> uint8 pixels) is pure CPU work that releases the GIL in PIL, so callers may
run it on threads while the model runs; ``embed_pixels`` normalises on the model's device, so the
batch job and a query go through exactly the same arithmetic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cbir.embedding import models
from cbir.embedding.preprocess import Prepared, PreprocessSpec, prepare_bytes, prepare_image
from cbir.errors import BadImage, FailedPrecondition
from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.model_names import DEFAULT_MODEL

log = logging.getLogger(__name__)

CPU_BATCH = 32
GPU_BATCH = 256


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n_ok, dim) float32, L2-normalised rows
    ok: list[int] = field(default_factory=list)  # input index of each row of `vectors`
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per ok image
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, detail)


class Embedder:
    """A loaded model + its preprocessing. Thread-safe for ``prepare``; call ``embed_*`` from
    one thread at a time (torch already parallelises one batch across cores)."""

    def __init__(
        self, spec: models.ModelSpec, net: nn.Module, version: str, device: str,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.name = spec.name
        self.dim = spec.dim
        self.version = version
        self.device = device
        self.preprocess: PreprocessSpec = spec.preprocess
        self.limits = limits
        self.batch_size = GPU_BATCH if device.startswith("cuda") else CPU_BATCH
        self._net = net
        dev = torch.device(device)
        self._mean = torch.tensor(spec.preprocess.mean, device=dev).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, device=dev).view(1, 3, 1, 1)

    def prepare(self, data: bytes) -> Prepared:
        """Bytes -> model pixels; raises ``BadImage``."""
        return prepare_bytes(data, self.preprocess, self.limits)

    def try_prepare(self, data: bytes) -> Prepared | BadImage:
        """Like ``prepare`` but returns the error: a bad image must never escape a batch."""
        try:
            return self.prepare(data)
        except BadImage as exc:
            return exc
        except Exception as exc:  # a decoder bug on hostile bytes is still just a bad image
            return BadImage("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}")

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, dim) float32 L2-normalised."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self._forward(pixels[i : i + self.batch_size])
               for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        cuda = self.device.startswith("cuda")
        x = _as_tensor(pixels)
        if cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        # channels_last: NHWC is what oneDNN (CPU) and cuDNN (GPU) run depthwise convs fastest on.
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        if cuda:
            with torch.autocast("cuda", dtype=torch.float16):
                feats = self._net(x)
        else:
            feats = self._net(x)
        return F.normalize(feats.float(), dim=1).cpu().numpy()

    def embed_bytes(self, images: Sequence[bytes]) -> EmbedResult:
        """Decode + embed; bad images are reported in ``failures``, never raised."""
        if len(images) > 1:
            with ThreadPoolExecutor(min(4, len(images))) as pool:
                prepared = list(pool.map(self.try_prepare, images))
        else:
            prepared = [self.try_prepare(b) for b in images]
        ok: list[int] = []
        sizes: list[tuple[int, int]] = []
        failures: list[tuple[int, str, str]] = []
        good: list[np.ndarray] = []
        for i, item in enumerate(prepared):
            if isinstance(item, BadImage):
                failures.append((i, item.reason, item.detail))
            else:
                ok.append(i)
                sizes.append(item.size)
                good.append(item.pixels)
        batch = np.stack(good) if good else np.zeros((0, 1, 1, 3), dtype=np.uint8)
        return EmbedResult(self.embed_pixels(batch), ok, sizes, failures)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Already-decoded images (full resolution, no JPEG draft) -> (N, dim) vectors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels(np.stack([prepare_image(im, self.preprocess).pixels
                                           for im in images]))

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        """ImageNet logits where the network has its classifier (efficientnet_lite0 only);
        used to prove the weights are wired right."""
        head = getattr(self._net, "net", None)
        if head is None:
            raise FailedPrecondition(f"{self.name} has no classifier head here")
        with torch.inference_mode():
            x = _as_tensor(pixels).to(self.device)
            x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
            return head(x).float().cpu().numpy()


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    # torch wants writable memory; PIL-backed arrays are read-only views.
    arr = np.ascontiguousarray(pixels)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPrecondition(f"device {device!r} requested but CUDA is not available")
    return device


def set_torch_threads(threads: int | None) -> None:
    """Share the CPU between concurrent workers instead of oversubscribing it."""
    if threads and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@lru_cache(maxsize=4)
def _load(name: str, weights: str | None, device: str) -> Embedder:
    spec = models.model_spec(name)
    path = models.resolve_weights(spec, weights)
    digest = models.file_sha256(path)
    net = spec.build(models.load_state_dict(path)).eval().to(device)
    net = net.to(memory_format=torch.channels_last)
    version = models.model_version(name, digest, spec.preprocess)
    log.info("loaded %s (version %s) on %s from %s", name, version, device, path)
    return Embedder(spec, net, version, device)


def load_embedder(
    name: str = DEFAULT_MODEL, weights: str | None = None, device: str | None = None
) -> Embedder:
    """The embedder for ``name``, built once per process and arguments."""
    models.model_spec(name)  # unknown names fail fast with the list of known ones
    threads = os.environ.get("CBIR_TORCH_THREADS")
    if threads:
        set_torch_threads(int(threads))
    return _load(name, weights, resolve_device(device))
