"""Image decoding under thousands of hostile inputs: every input either decodes to an RGB
image or raises BadImage; nothing else escapes, nothing hangs (per-example deadline and a
hard pytest timeout)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbir.embedding import decode_image, load_embedder
from cbir.embedding.preprocess import PreprocessSpec, prepare_bytes
from cbir.errors import BadImage
from tests.fuzz.conftest import TRIED, examples
from tests.fuzz.inputs import image_bytes, seeds


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=timedelta(seconds=5), database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.timeout(300)
def test_seeds_are_real_images() -> None:
    for data in seeds():  # the mutations start from images that do decode
        assert decode_image(data).mode == "RGB"


@pytest.mark.timeout(300)
@fuzz(examples(2000))
@given(data=image_bytes)
def test_decode_succeeds_or_raises_bad_image(data: bytes) -> None:
    TRIED["decode_image"] += 1
    try:
        img = decode_image(data)
    except BadImage as exc:
        assert exc.reason in {"empty", "too_large", "not_an_image", "decompression_bomb",
                              "truncated", "corrupt", "unsupported_mode"}
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    pixels = prepare_bytes(data, PreprocessSpec()).pixels  # the model's input path too
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


@pytest.mark.timeout(300)
@fuzz(examples(2000) // 100 + 10)
@given(batch=st.lists(image_bytes, min_size=1, max_size=6))
def test_embed_bytes_accounts_for_every_input(batch: list[bytes]) -> None:
    """The real model behind the same path: each input is a row or a failure, never both."""
    TRIED["Embedder.embed_bytes"] += len(batch)
    res = load_embedder("efficientnet_lite0", device="cpu").embed_bytes(batch)
    failed = [i for i, _, _ in res.failures]
    assert sorted(res.ok + failed) == list(range(len(batch)))
    assert res.vectors.shape == (len(res.ok), 1280)
    assert np.isfinite(res.vectors).all()
    if len(res.ok):
        assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-4)
