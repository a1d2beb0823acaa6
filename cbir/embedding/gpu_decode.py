"""CUDA path: JPEGs decoded on the GPU (nvJPEG via ``torchvision.io.decode_jpeg``, batched),
EXIF-oriented, cropped and resized there, then embedded without the pixels ever touching the
host. Everything that is not a plain baseline/progressive RGB or grey JPEG (PNG, CMYK, WebP, a
header the checks refuse, a batch nvJPEG rejects) takes the CPU path of ``preprocess``.

The header is still read by PIL on the CPU (a few hundred bytes): the same size limits, the same
EXIF orientation, the same reported size as the CPU path. Resizing is torch's antialiased
bilinear, not PIL's, so GPU-decoded vectors are close to (cosine >= 0.99), not bit-equal with,
the CPU path's; ``device="cpu"`` runs this very code on the CPU decoder, which is how the tests
check it without a GPU.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cbir.embedding.preprocess import PreprocessSpec, check_decoded_pixels, check_size
from cbir.embedding.result import EmbedResult, merge
from cbir.errors import BadImage
from cbir.limits import Limits

_GPU_MODES = {"RGB", "L"}  # nvJPEG's colour conversions; CMYK/YCCK go to the CPU


@dataclass(frozen=True)
class JpegHeader:
    size: tuple[int, int]  # (width, height) after EXIF orientation
    orientation: int


def probe_jpeg(data: bytes, limits: Limits, query_cap: int | None) -> JpegHeader | None:
    """The header of a JPEG the GPU can decode, or None (CPU path). Raises ``BadImage`` for
    a JPEG the limits refuse, exactly as the CPU path would."""
    if data[:2] != b"\xff\xd8":
        return None
    check_size(len(data), limits)
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
    except Exception:
        return None  # let the CPU path name what is wrong with it
    if img.format != "JPEG" or img.mode not in _GPU_MODES:
        return None
    w, h = img.size
    if w * h > limits.max_image_pixels:
        raise BadImage("decompression_bomb", f"{w}x{h} pixels > limit {limits.max_image_pixels}")
    check_decoded_pixels(img, query_cap)  # the GPU decodes at full size: no draft
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: upright, like the CPU path
        orientation = 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return JpegHeader((w, h), orientation)


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation 1-8 applied to a (C, H, W) tensor, as ``ImageOps.exif_transpose``."""
    hw = (1, 2)
    ops = {
        2: lambda x: x.flip(2),
        3: lambda x: x.rot90(2, hw),
        4: lambda x: x.flip(1),
        5: lambda x: x.transpose(1, 2),
        6: lambda x: x.rot90(-1, hw),
        7: lambda x: x.transpose(1, 2).rot90(2, hw),
        8: lambda x: x.rot90(1, hw),
    }
    op = ops.get(orientation)
    return op(chw) if op is not None else chw


def crop_resize(chw: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(C, H, W) uint8 -> (S, S, 3) uint8: center square of the shorter side, resized with
    antialiased bilinear (the CPU path's geometry)."""
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    _, h, w = chw.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = chw[:, top : top + side, left : left + side].unsqueeze(0).float()
    size = spec.input_size
    out = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def decode_batch(
    images: list[bytes], headers: list[JpegHeader], spec: PreprocessSpec, device: str
) -> torch.Tensor:
    """Batched decode on ``device`` -> (N, S, S, 3) uint8 on ``device``. Raises on any
    undecodable image (nvJPEG returns no partial results): the caller falls back to the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images]
    decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return torch.stack([crop_resize(orient(chw, hd.orientation), spec)
                        for chw, hd in zip(decoded, headers, strict=True)])


def gpu_batch_size(device: str, floor: int = 64, ceiling: int = 1024) -> int:
    """Images per forward pass for this GPU: ~8 per GiB of device memory (fp16 224 px
    ResNet-50 activations are ~25 MB per image at peak), a power of two in [floor, ceiling]."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return floor
    total_gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    return max(floor, min(ceiling, 2 ** int(math.log2(max(1.0, total_gib * 8)))))


RunTensor = Callable[[torch.Tensor], np.ndarray]
CpuEmbed = Callable[[list[bytes], bool], EmbedResult]


@dataclass(frozen=True)
class DeviceJpegPath:
    """Splits a batch: decodable JPEGs go through ``decode_batch`` + ``run_tensor`` on the
    device, the rest (and any batch nvJPEG refuses) through ``cpu_embed``."""

    spec: PreprocessSpec
    limits: Limits
    device: str
    batch_size: int
    run_tensor: RunTensor
    cpu_embed: CpuEmbed

    def _split(
        self, images: Sequence[bytes], for_query: bool
    ) -> tuple[list[int], list[JpegHeader], list[int], list[tuple[int, BadImage]]]:
        cap = self.limits.max_query_image_pixels if for_query else None
        on_device: list[int] = []
        headers: list[JpegHeader] = []
        on_cpu: list[int] = []
        refused: list[tuple[int, BadImage]] = []
        for i, data in enumerate(images):
            try:
                header = probe_jpeg(data, self.limits, cap)
            except BadImage as exc:
                refused.append((i, exc))
                continue
            if header is None:
                on_cpu.append(i)
            else:
                on_device.append(i)
                headers.append(header)
        return on_device, headers, on_cpu, refused

    def _device_chunk(self, chunk: list[bytes], headers: list[JpegHeader],
                      for_query: bool) -> EmbedResult:
        try:
            pixels = decode_batch(chunk, headers, self.spec, self.device)
        except Exception:  # one image nvJPEG cannot read fails the batch: let PIL sort it out
            return self.cpu_embed(chunk, for_query)
        vectors = self.run_tensor(pixels)
        return EmbedResult(vectors, list(range(len(chunk))), [h.size for h in headers])

    def embed_bytes(self, images: Sequence[bytes], for_query: bool, dim: int) -> EmbedResult:
        on_device, headers, on_cpu, refused = self._split(images, for_query)
        parts: list[tuple[list[int], EmbedResult]] = []
        for start in range(0, len(on_device), self.batch_size):
            idx = on_device[start : start + self.batch_size]
            res = self._device_chunk([images[i] for i in idx],
                                     headers[start : start + self.batch_size], for_query)
            parts.append((idx, res))
        if on_cpu:
            parts.append((on_cpu, self.cpu_embed([images[i] for i in on_cpu], for_query)))
        bad = EmbedResult(np.zeros((0, dim), dtype=np.float32),
                          failures=[(k, exc.reason, exc.detail) for k, (_, exc) in
                                    enumerate(refused)])
        parts.append(([i for i, _ in refused], bad))
        return merge(parts, dim)
