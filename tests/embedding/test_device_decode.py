"""The CUDA decode path (nvJPEG batches, EXIF orientation, crop + resize on the device). Its
code runs here on torchvision's CPU decoder (``device_decode=True`` on a CPU embedder), so the
routing, orientation and geometry are checked without a GPU; the gpu-marked tests run the
same checks on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cbir.embedding import Embedder, load_embedder
from cbir.embedding.gpu_decode import gpu_batch_size, orient
from demo.photos import bundled_photos
from tests.embedding import odd_images as odd

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cpu_path() -> Embedder:
    return load_embedder("efficientnet_lite0", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def device_path(cpu_path: Embedder) -> Embedder:
    from cbir.embedding.models import model_spec

    return Embedder(model_spec(cpu_path.name), cpu_path._pipeline, cpu_path._runtime,
                    cpu_path.version, "cpu", device_decode=True)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return odd.small(next(p for p in bundled_photos() if p.name == "chelsea").pixels, 480)


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[odd.EXIF_ORIENTATION] = orientation
    return odd.save(img, "JPEG", quality=95, exif=exif.tobytes())


def test_orient_matches_pil_exif_transpose(cat: Image.Image) -> None:
    from PIL import ImageOps

    arr = np.array(cat.convert("RGB").resize((7, 5)))
    for orientation in range(1, 9):
        img = Image.fromarray(arr)
        exif = img.getexif()
        exif[odd.EXIF_ORIENTATION] = orientation
        img.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(img))
        got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0)
        assert np.array_equal(got.numpy(), expected), orientation


def test_device_path_matches_cpu_path(cpu_path: Embedder, device_path: Embedder,
                                      cat: Image.Image) -> None:
    """JPEGs (every EXIF orientation, grey, progressive) go through the device decoder, the
    rest (PNG, CMYK, junk) through PIL; vectors agree with the CPU path, sizes and failures
    are identical, and the input order is kept."""
    images = [_exif_jpeg(cat, o) for o in range(1, 9)]
    images += [odd.save(cat.convert("L"), "JPEG"), odd.save(cat, "JPEG", progressive=True),
               odd.save(cat, "PNG"), odd.cmyk_jpeg(cat), b"junk", odd.truncated_jpeg(cat)]
    a = cpu_path.embed_bytes(images)
    b = device_path.embed_bytes(images)
    assert b.ok == a.ok and b.sizes == a.sizes
    assert [f[:2] for f in b.failures] == [f[:2] for f in a.failures]
    cos = np.sum(a.vectors * b.vectors, axis=1)
    assert cos.min() > 0.99, cos
    # The bound is meaningful: the same photo in another orientation is far below it.
    assert float(b.vectors[0] @ b.vectors[5]) < 0.95


def test_device_path_applies_the_query_cap(device_path: Embedder) -> None:
    big = Image.new("RGB", (4096, 4096), (40, 90, 160))
    data = odd.save(big, "JPEG", quality=50)  # 16.7 MP: the GPU decodes at full size
    res = device_path.embed_bytes([data], for_query=True)
    assert res.ok == [] and res.failures[0][1] == "decompression_bomb"
    assert "max_query_image_pixels" in res.failures[0][2]


def test_gpu_batch_size_on_cpu_is_the_floor() -> None:
    assert gpu_batch_size("cpu") == 64


@pytest.mark.gpu
@needs_cuda
def test_cuda_decode_and_fp16_match_cpu(cpu_path: Embedder, cat: Image.Image) -> None:
    gpu = load_embedder("efficientnet_lite0", device="cuda")
    assert gpu.runtime == "torch" and gpu.version == cpu_path.version
    images = [_exif_jpeg(cat, o) for o in (1, 6, 8)] + [odd.save(cat, "PNG"), b"junk"]
    a, b = cpu_path.embed_bytes(images), gpu.embed_bytes(images)
    assert b.ok == a.ok and b.sizes == a.sizes
    assert np.sum(a.vectors * b.vectors, axis=1).min() > 0.99
    assert 64 <= gpu.batch_size <= 1024


@pytest.mark.gpu
@needs_cuda
def test_cuda_overlapped_batches_equal_single_batches(cat: Image.Image) -> None:
    gpu = load_embedder("efficientnet_lite0", device="cuda")
    pixels = np.stack([gpu.prepare(odd.save(cat.rotate(a), "JPEG")).pixels for a in range(12)])
    whole = gpu.embed_pixels(pixels)
    gpu.batch_size, saved = 4, gpu.batch_size  # three batches: transfers overlap compute
    try:
        split = gpu.embed_pixels(pixels)
    finally:
        gpu.batch_size = saved
    assert np.abs(whole - split).max() < 1e-2


def test_backfill_task_hands_bytes_to_the_device_decoder(
    bucket: str, device_path: Embedder, cpu_path: Embedder, cat: Image.Image,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backfill task on an embedder that decodes on the device (CUDA; here the same code on
    the CPU decoder) passes the fetched bytes through: same rows, sizes and errors as the CPU
    path, vectors within the device path's tolerance."""
    from cbir import storage
    from jobs.embed import mapper
    from jobs.embed.config import BackfillConfig, EmbedTask, ObjectRef

    objects = {"a.jpg": _exif_jpeg(cat, 6), "b.png": odd.save(cat, "PNG"),
               "c.jpg": odd.save(cat, "JPEG"), "bad.jpg": b"not a jpeg at all"}
    for key, data in objects.items():
        storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    task = EmbedTask("part-x.parquet", bucket,
                     tuple(ObjectRef(k, len(v)) for k, v in objects.items()))
    config = BackfillConfig(input=f"s3://{bucket}", output="unused", model=cpu_path.name,
                            model_version=cpu_path.version, dim=cpu_path.dim)
    results = {}
    for name, emb in (("cpu", cpu_path), ("device", device_path)):
        monkeypatch.setattr(mapper, "embedder_for", lambda *a, emb=emb: emb)
        results[name] = mapper.embed_task(config, task)
    (cpu_rows, cpu_err, _), (dev_rows, dev_err, _) = results["cpu"], results["device"]
    assert sorted(dev_rows.keys) == sorted(cpu_rows.keys) and len(dev_rows.keys) == 3
    assert dev_err.keys == cpu_err.keys == [f"s3://{bucket}/bad.jpg"]
    cpu_vec = dict(zip(cpu_rows.keys, np.concatenate(cpu_rows.vectors), strict=True))
    dev_vec = dict(zip(dev_rows.keys, np.concatenate(dev_rows.vectors), strict=True))
    assert dict(zip(dev_rows.keys, dev_rows.sizes, strict=True)) == dict(
        zip(cpu_rows.keys, cpu_rows.sizes, strict=True))
    assert min(float(cpu_vec[k] @ dev_vec[k]) for k in cpu_vec) > 0.99
