"""Image decoding under thousands of hostile inputs: every input either decodes to an RGB
image or raises BadImage; nothing else escapes, nothing hangs (a 30 s per-example deadline, far
above any real decode even on a loaded machine, and a hard pytest timeout); image headers
decoded as queries stay within the memory budget."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbir.embedding import decode_image, load_embedder
from cbir.embedding.preprocess import PreprocessSpec, prepare_bytes
from cbir.errors import BadImage
from tests.fuzz.conftest import TRIED, examples
from tests.fuzz.inputs import image_bytes, query_headers, seeds


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=timedelta(seconds=30), database=None,
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


QUERY_RSS_BUDGET_MIB = 300


@pytest.mark.timeout(300)
def test_query_headers_stay_in_the_memory_budget() -> None:
    """Image headers declaring any size/depth/mode, decoded as queries: each one decodes or is
    refused (never anything else), and the whole run's peak RSS (VmHWM, reset first) grows by
    less than the budget the query pixel cap implies."""
    from bench.embed_cluster import reset_peak_rss, rss_kib
    from cbir.limits import DEFAULT_LIMITS

    pid = os.getpid()
    reset_peak_rss(pid)
    before = rss_kib(pid)
    cap = DEFAULT_LIMITS.max_query_image_pixels
    outcomes: Counter[str] = Counter()

    @fuzz(examples(2000) // 4 + 20)
    @given(data=query_headers)
    def one(data: bytes) -> None:
        TRIED["query headers"] += 1
        try:
            pixels = prepare_bytes(data, PreprocessSpec(), decoded_pixel_cap=cap).pixels
        except BadImage as exc:
            outcomes[exc.reason] += 1
            return
        outcomes["ok"] += 1
        assert pixels.shape == (224, 224, 3)

    one()
    grew_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert outcomes["decompression_bomb"] > 0, outcomes  # the cap was exercised
    assert grew_mib < QUERY_RSS_BUDGET_MIB, f"peak RSS +{grew_mib:.0f} MiB ({outcomes})"
