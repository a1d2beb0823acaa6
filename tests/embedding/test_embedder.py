"""One preprocessing path for every image shape a bucket holds; bad bytes reported, never
raised; odd modes and EXIF rotation embedded as the picture they show."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cbir.embedding import Embedder, decode_image, load_embedder
from cbir.errors import BadImage
from cbir.limits import Limits
from demo.photos import bundled_photos, encode_jpeg
from tests.embedding import odd_images as odd
from tests.embedding.helpers import embed_images


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    photo = next(p for p in bundled_photos() if p.name == "chelsea")
    return odd.small(photo.pixels)


def _vec(emb: Embedder, data: bytes) -> np.ndarray:
    res = emb.embed_bytes([data])
    assert not res.failures, res.failures
    return res.vectors[0]


def test_vectors_are_unit_and_batch_independent(embedder: Embedder, photos: list) -> None:
    data = [encode_jpeg(p.pixels) for p in photos[:6]]
    batch = embedder.embed_bytes(data)
    assert batch.vectors.shape == (6, 1280) and batch.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    singles = np.stack([_vec(embedder, d) for d in data])
    assert np.abs(singles - batch.vectors).max() < 1e-5
    assert batch.sizes == [(p.pixels.shape[1], p.pixels.shape[0]) for p in photos[:6]]


def test_bad_inputs_are_reported_with_reasons(embedder: Embedder, cat: Image.Image) -> None:
    bad = odd.bad_objects(cat)
    good = odd.save(cat, "JPEG")
    res = embedder.embed_bytes([good, *(b for b, _ in bad.values()), good])
    assert res.ok == [0, len(bad) + 1]
    assert [(i, r) for i, r, _ in res.failures] == [
        (i + 1, reason) for i, (_, reason) in enumerate(bad.values())
    ]
    assert np.abs(res.vectors[0] - res.vectors[1]).max() < 1e-6


def test_decode_limits(cat: Image.Image) -> None:
    data = odd.save(cat, "PNG")
    with pytest.raises(BadImage) as exc:
        decode_image(data, Limits(max_image_bytes=len(data) - 1))
    assert exc.value.reason == "too_large"
    with pytest.raises(BadImage) as exc:
        decode_image(data, Limits(max_image_pixels=cat.width * cat.height - 1))
    assert exc.value.reason == "decompression_bomb"


def test_exif_rotated_equals_physically_rotated(embedder: Embedder, cat: Image.Image) -> None:
    stored_sideways, upright = odd.exif_rotated_pair(cat)
    res = embedder.embed_bytes([stored_sideways, upright])
    assert res.sizes == [cat.size, cat.size]  # reported after EXIF orientation
    assert np.abs(res.vectors[0] - res.vectors[1]).max() < 1e-5
    # ...and ignoring the tag would give a clearly different vector: the test can fail.
    raw_sideways = odd.save(cat.transpose(Image.Transpose.ROTATE_90), "PNG")
    assert float(_vec(embedder, raw_sideways) @ res.vectors[1]) < 0.95


def test_sixteen_bit_grey_equals_eight_bit(embedder: Embedder, cat: Image.Image) -> None:
    v16 = _vec(embedder, odd.grey16_png(cat))
    v8 = _vec(embedder, odd.save(cat.convert("L"), "PNG"))
    assert np.abs(v16 - v8).max() < 1e-5


def test_alpha_is_composited_on_white(embedder: Embedder, cat: Image.Image) -> None:
    rgba = _vec(embedder, odd.rgba_png(cat))
    expected = _vec(embedder, odd.save(odd.white_boxed(cat), "PNG"))
    assert np.abs(rgba - expected).max() < 1e-5


def test_cmyk_and_palette_look_like_the_rgb_photo(embedder: Embedder, cat: Image.Image) -> None:
    rgb = _vec(embedder, odd.save(cat, "PNG"))
    assert float(_vec(embedder, odd.cmyk_jpeg(cat)) @ rgb) > 0.9
    assert float(_vec(embedder, odd.palette_gif(cat)) @ rgb) > 0.9


def test_embed_images_matches_embed_bytes_for_lossless_input(
    embedder: Embedder, cat: Image.Image
) -> None:
    data = odd.save(cat, "PNG")
    from_bytes = _vec(embedder, data)
    from_pil = embed_images(embedder, [decode_image(data)])[0]
    assert np.abs(from_bytes - from_pil).max() < 1e-5


def test_large_jpeg_reduced_decoding_stays_faithful(embedder: Embedder, photos: list) -> None:
    big = Image.fromarray(photos[0].pixels).resize((1920, 1080), Image.Resampling.BICUBIC)
    data = odd.save(big, "JPEG", quality=90)
    drafted = _vec(embedder, data)  # the shared path decodes at 1/4 size in the DCT domain
    full = embed_images(embedder, [Image.open(io.BytesIO(data))])[0]
    assert float(drafted @ full) > 0.97
    assert embedder.embed_bytes([data]).sizes == [(1920, 1080)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu(embedder: Embedder, photos: list) -> None:
    data = [encode_jpeg(p.pixels) for p in photos[:8]]
    gpu = load_embedder("efficientnet_lite0", device="cuda")
    assert gpu.version == embedder.version
    cos = np.sum(gpu.embed_bytes(data).vectors * embedder.embed_bytes(data).vectors, axis=1)
    assert cos.min() > 0.999
