"""Runtimes: ONNX Runtime computes the torch model's embedding (1e-4) on real photos, for each
model, so the model version and the index contract do not depend on the runtime; the ONNX
graph is exported once per model version into the local cache; auto picks the fast one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cbir.embedding import load_embedder, onnx_export
from cbir.embedding.runtimes import resolve_runtime
from cbir.errors import InvalidArgument
from demo.photos import encode_jpeg


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "onnx-cache"
    monkeypatch.setenv(onnx_export.ONNX_CACHE_ENV, str(cache))
    return cache


def _jpegs(photos: list) -> list[bytes]:
    return [encode_jpeg(p.pixels) for p in photos[:12]]


def test_onnxruntime_equals_torch_for_efficientnet_lite0(photos: list) -> None:
    torch_emb = load_embedder("efficientnet_lite0", device="cpu", runtime="torch")
    ort_emb = load_embedder("efficientnet_lite0", device="cpu", runtime="onnxruntime")
    assert (torch_emb.runtime, ort_emb.runtime) == ("torch", "onnxruntime")
    assert ort_emb.version == torch_emb.version  # same weights, same preprocessing
    data = _jpegs(photos)
    a, b = torch_emb.embed_bytes(data), ort_emb.embed_bytes(data)
    assert a.ok == b.ok == list(range(len(data)))
    assert np.abs(a.vectors - b.vectors).max() < 1e-4
    # The bound is meaningful: two different photos are far apart.
    assert np.abs(a.vectors[0] - a.vectors[1]).max() > 1e-2


@pytest.mark.slow
def test_onnxruntime_equals_torch_for_resnet50(photos: list, tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "r50-random.pth"  # nothing downloads: random-init weights in a file
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    torch_emb = load_embedder("resnet50", str(weights), "cpu", "torch")
    ort_emb = load_embedder("resnet50", str(weights), "cpu", "onnxruntime")
    assert ort_emb.version == torch_emb.version and ort_emb.dim == 2048
    data = _jpegs(photos)[:6]
    a, b = torch_emb.embed_bytes(data), ort_emb.embed_bytes(data)
    assert np.abs(a.vectors - b.vectors).max() < 1e-4
    assert np.abs(a.vectors[0] - a.vectors[1]).max() > 1e-3


def test_export_is_cached_by_model_version(onnx_cache: Path) -> None:
    emb = load_embedder("efficientnet_lite0", device="cpu", runtime="torch")
    path = onnx_export.onnx_model(emb._pipeline, emb.name, emb.version, 224)
    assert path.parent == onnx_cache and emb.version in path.name and path.is_file()
    assert not [p for p in onnx_cache.iterdir() if p.name.endswith(".tmp")]  # renamed in
    before = path.stat().st_mtime_ns
    again = onnx_export.onnx_model(emb._pipeline, emb.name, emb.version, 224)
    assert again == path and path.stat().st_mtime_ns == before  # not exported twice


def test_auto_runtime_is_onnxruntime_on_cpu_and_torch_on_cuda() -> None:
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    assert resolve_runtime("auto", "cuda:0") == "torch"
    assert resolve_runtime("torch", "cpu") == "torch"
    assert load_embedder("efficientnet_lite0", device="cpu").runtime == "onnxruntime"
    with pytest.raises(InvalidArgument, match=r"unknown runtime 'tensorrt'.*onnxruntime"):
        resolve_runtime("tensorrt", "cpu")


def test_cache_dir_default_is_under_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(onnx_export.ONNX_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert onnx_export.cache_dir() == Path("/x/cache/cbir/onnx")
