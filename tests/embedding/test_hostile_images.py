"""Hostile image queries (issue 16): refused from the header, before a pixel is decoded, with a
reason that names the limit; only allowlisted formats are opened (never EPS/ghostscript); the
16-bit path does not multiply memory. Peak RSS is read from /proc (VmHWM, reset first)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from bench.embed_cluster import reset_peak_rss, rss_kib
from cbir.embedding import Embedder, decode_image
from cbir.embedding.preprocess import ALLOWED_FORMATS, PreprocessSpec, prepare_bytes
from cbir.errors import BadImage
from cbir.limits import DEFAULT_LIMITS
from demo.photos import bundled_photos
from tests.embedding import odd_images as odd
from tests.fuzz.inputs import hostile_queries, png_zero_rows


@pytest.mark.parametrize("name", ["png16_8000", "rgba_8000", "gif_screen_8000"])
def test_known_memory_bombs_are_refused_from_the_header(embedder: Embedder, name: str) -> None:
    data = hostile_queries()[name]
    pid = os.getpid()
    reset_peak_rss(pid)
    before = rss_kib(pid)
    res = embedder.embed_bytes([data] * 4, for_query=True)
    grew_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert res.ok == [] and [r for _, r, _ in res.failures] == ["decompression_bomb"] * 4
    assert "8000x8000" in res.failures[0][2]
    assert "max_query_image_pixels" in res.failures[0][2]
    assert grew_mib < 50, f"refusing 4 x {name} grew the peak RSS by {grew_mib:.0f} MiB"


def test_the_query_cap_counts_jpeg_pixels_after_draft(embedder: Embedder) -> None:
    """A 4000x3000 JPEG (12 MP, over the 8.4 MP cap) decodes at 1/8 scale: accepted; the same
    picture as a PNG would decode at full size: refused."""
    photo = Image.fromarray(bundled_photos()[0].pixels).resize((4000, 3000))
    jpeg, png = odd.save(photo, "JPEG", quality=80), odd.save(photo, "PNG", compress_level=1)
    res = embedder.embed_bytes([jpeg, png], for_query=True)
    assert res.ok == [0] and res.sizes == [(4000, 3000)]
    assert res.failures[0][:2] == (1, "decompression_bomb")
    assert embedder.embed_bytes([png]).ok == [0]  # the backfill's own limit is higher


def test_only_allowlisted_formats_are_opened(embedder: Embedder) -> None:
    eps = hostile_queries()["eps"]
    with pytest.raises(BadImage, match="not one of the accepted formats") as exc:
        decode_image(eps)
    assert exc.value.reason == "not_an_image"
    # Formats PIL reads that are not on the list are refused too (PPM, ICO, TGA...).
    cat = odd.small(bundled_photos()[0].pixels)
    for fmt in ("PPM", "ICO", "TGA"):
        with pytest.raises(BadImage, match="accepted formats"):
            decode_image(odd.save(cat, fmt))
    for fmt in ALLOWED_FORMATS:  # and every allowed one still decodes
        img = cat.convert("P") if fmt == "GIF" else cat
        assert decode_image(odd.save(img, fmt)).size == cat.size


def test_sixteen_bit_decode_holds_one_working_copy() -> None:
    """A 4000x4000 16-bit PNG within the backfill's limits: decoding it used to go through
    int64 (3 x 128 MB copies, ~430 MB peak with the image); now the uint16 image (32 MB), its
    bytes, one uint16 and one uint8 copy and the RGB image (48 MB): ~160 MB."""
    data = png_zero_rows(4000, 4000, 0, 16)
    pid = os.getpid()
    reset_peak_rss(pid)
    before = rss_kib(pid)
    pixels = prepare_bytes(data, PreprocessSpec(), DEFAULT_LIMITS).pixels
    grew_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert pixels.shape == (224, 224, 3) and int(pixels.max()) == 0
    assert grew_mib < 250, f"16-bit 4000x4000 decode grew the peak RSS by {grew_mib:.0f} MiB"


def test_sixteen_bit_scale_is_unchanged() -> None:
    """v // 257 exactly as before (the model version covers the preprocessing)."""
    ramp = (np.arange(65536, dtype=np.uint32).reshape(256, 256)).astype(np.uint16)
    img = decode_image(odd.save(Image.fromarray(ramp), "PNG"))
    got = np.asarray(img)[..., 0]
    assert np.array_equal(got, (ramp // 257).astype(np.uint8))
