"""Runtimes: what executes the network. One ``Runtime`` interface, two implementations.

Both run the same ``Pipeline`` (uint8 NHWC pixels -> normalise -> backbone -> L2-normalise), so
the normalisation arithmetic is part of the graph whichever runtime runs it:

- ``torch``: eager PyTorch (CPU, or CUDA with fp16 + channels_last + pinned memory and the
  host->device copy of the next batch overlapped with the current one on a side stream).
- ``onnxruntime``: the same Pipeline exported once to ONNX (``onnx_export``) and run by ONNX
  Runtime (CPU; the CUDA provider where it is installed). Embeddings agree with torch to 1e-4,
  so the model version (and the index contract) does not depend on the runtime.

``auto`` = CUDA torch on a GPU, ONNX Runtime on CPU when it is installed, torch otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cbir.errors import FailedPrecondition, InvalidArgument
from cbir.model_names import RUNTIME_NAMES

log = logging.getLogger(__name__)

RUNTIMES = RUNTIME_NAMES


class Runtime(Protocol):
    name: str

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, dim) float32 L2-normalised rows (one batch)."""
        ...

    def run_batches(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several batches, in order (CUDA overlaps their transfers with compute)."""
        ...


class Pipeline(nn.Module):
    """uint8 NHWC -> L2-normalised embedding: the function every runtime computes."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(self.mean.dtype)
        # channels_last: NHWC is what oneDNN (CPU) and cuDNN (GPU) run depthwise convs fastest on.
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return F.normalize(self.net(x).float(), dim=1)


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` -> a concrete runtime for this device; unknown names fail with the list."""
    if runtime not in RUNTIMES:
        raise InvalidArgument(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        if device.startswith("cuda"):
            return "torch"
        return "onnxruntime" if onnxruntime_installed() else "torch"
    if runtime == "onnxruntime" and not onnxruntime_installed():
        raise FailedPrecondition("runtime onnxruntime needs the package onnxruntime "
                                 "(pip install 'cbir[embed]')")
    return runtime


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    # torch wants writable memory; PIL-backed arrays are read-only views.
    arr = np.ascontiguousarray(pixels)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


class TorchRuntime:
    name = "torch"

    def __init__(self, pipeline: Pipeline, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        pipeline = pipeline.eval().to(device)
        if self.cuda:
            pipeline = pipeline.half()  # fp16 weights + buffers: tensor cores, half the traffic
        self.pipeline = pipeline.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = _as_tensor(pixels)
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.pipeline(x).float().cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        """(N, S, S, 3) uint8 already on this runtime's device (GPU-decoded) -> vectors."""
        return self.pipeline(pixels).float().cpu().numpy()

    @torch.inference_mode()
    def run_batches(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """CUDA: copy batch i+1 to the device on a side stream while batch i computes."""
        if not self.cuda or len(batches) < 2:
            return [self.run(b) for b in batches]
        copy_stream = torch.cuda.Stream(device=self.device)
        compute = torch.cuda.current_stream(self.device)

        def upload(batch: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event]:
            host = _as_tensor(batch).pin_memory()
            with torch.cuda.stream(copy_stream):
                dev = host.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(copy_stream)
            return dev, done

        outputs: list[torch.Tensor] = []
        nxt = upload(batches[0])
        for i in range(len(batches)):
            dev, done = nxt
            if i + 1 < len(batches):
                nxt = upload(batches[i + 1])
            compute.wait_event(done)
            dev.record_stream(compute)  # the allocator must not reuse it before compute ends
            outputs.append(self.pipeline(dev).float())
        return [o.cpu().numpy() for o in outputs]


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, model_path: str, device: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise FailedPrecondition(
                    "runtime onnxruntime on CUDA needs onnxruntime-gpu (the installed "
                    "onnxruntime has no CUDAExecutionProvider); use --runtime torch")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}),  # type: ignore[list-item]
                         "CPUExecutionProvider"]
        self.device = device
        self.session = ort.InferenceSession(model_path, options, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: np.ascontiguousarray(pixels)})[0]
        return np.asarray(out, dtype=np.float32)

    def run_batches(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.run(b) for b in batches]
