"""The default model is really EfficientNet-Lite0 with its ImageNet weights wired right: its
classifier names what is in real photos. Plus model loading, versions and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cbir import storage
from cbir.embedding import Embedder, describe_model, load_embedder
from cbir.embedding.models import ModelSpec, model_spec, resolve_weights
from cbir.errors import FailedPrecondition, InvalidArgument, NotFound
from demo.photos import bundled_photos, encode_jpeg
from tests.embedding.helpers import classify

# ImageNet class ids that are a right answer for each bundled photo.
EXPECTED = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "sklearn_china": {698, 442, 663, 483},  # palace, bell cote, monastery, castle
}


def test_classifier_names_real_photos(embedder: Embedder) -> None:
    photos = {p.name: p for p in bundled_photos()}
    for name, classes in EXPECTED.items():
        pixels = embedder.prepare(encode_jpeg(photos[name].pixels)).pixels
        top1 = int(np.argmax(classify(embedder, pixels[None])[0]))
        assert top1 in classes, (name, top1)


def test_embedder_attributes(embedder: Embedder) -> None:
    assert (embedder.name, embedder.dim, embedder.device) == ("efficientnet_lite0", 1280, "cpu")
    assert len(embedder.version) == 16
    assert describe_model("efficientnet_lite0").version == embedder.version
    assert load_embedder("efficientnet_lite0", device="cpu") is embedder  # cached


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown model 'vgg_nope'.*efficientnet_lite0"):
        load_embedder("vgg_nope")


def test_resnet50_without_weights_says_pass_weights(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(FailedPrecondition, match="--weights"):
        load_embedder("resnet50", device="cpu")


def test_missing_weights_file() -> None:
    with pytest.raises(NotFound, match="weights file not found"):
        load_embedder("efficientnet_lite0", weights="/nonexistent/w.pth")


@pytest.mark.slow
def test_resnet50_from_weights_path(tmp_path: Path, photos: list) -> None:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    emb = load_embedder("resnet50", weights=str(path), device="cpu")
    res = emb.embed_bytes([encode_jpeg(photos[0].pixels)])
    assert emb.dim == 2048 and res.vectors.shape == (1, 2048)
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)


def test_wrong_weights_for_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lite.pth"
    default = resolve_weights(_lite0_spec(), None)
    path.write_bytes(default.read_bytes())
    with pytest.raises(InvalidArgument, match="do not fit resnet50"):
        load_embedder("resnet50", weights=str(path), device="cpu")


def _lite0_spec() -> ModelSpec:
    return model_spec("efficientnet_lite0")


def test_weights_from_s3_and_version_tracks_weight_bytes(bucket: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_WEIGHTS_CACHE", str(tmp_path / "cache"))
    default = resolve_weights(_lite0_spec(), None)
    storage.write_bytes(f"s3://{bucket}/models/lite0.pth", default.read_bytes())
    same = describe_model("efficientnet_lite0", f"s3://{bucket}/models/lite0.pth")
    assert same.version == describe_model("efficientnet_lite0").version  # same bytes
    state = torch.load(default, map_location="cpu", weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1.0
    other = tmp_path / "other.pth"
    torch.save(state, other)
    assert describe_model("efficientnet_lite0", str(other)).version != same.version


def test_batchnorm_folding_keeps_the_function() -> None:
    from cbir.embedding.efficientnet_lite import efficientnet_lite0

    state = torch.load(resolve_weights(_lite0_spec(), None), map_location="cpu",
                       weights_only=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = efficientnet_lite0(state, fuse=False).features(x)
        fused = efficientnet_lite0(state, fuse=True).features(x)
    assert float((plain - fused).abs().max()) < 1e-3 * float(plain.abs().max())
