"""A bucket of real images in every shape the backfill must handle, on the moto S3 endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PIL import Image

from cbir import storage
from cbir.embedding import describe_model
from demo.photos import bundled_photos
from jobs.embed.config import BackfillConfig
from jobs.engines import EngineOptions
from tests.embedding import odd_images as odd

GOOD_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


@dataclass(frozen=True)
class ImageBucket:
    bucket: str
    objects: dict[str, bytes]  # key -> bytes
    good: set[str]  # keys that must be embedded
    bad: dict[str, str]  # key -> expected reason


def put(bucket: str, key: str, data: bytes) -> None:
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def make_objects() -> tuple[dict[str, bytes], set[str], dict[str, str]]:
    photos = {p.name: p for p in bundled_photos()}
    imgs = {n: odd.small(photos[n].pixels, 200) for n in GOOD_PHOTOS}
    objects = {f"photos/{n}.jpg": odd.save(im, "JPEG", quality=90) for n, im in imgs.items()}
    cat = imgs["chelsea"]
    sideways, upright = odd.exif_rotated_pair(cat)
    objects.update({
        "odd/cat_exif_rotated.png": sideways, "odd/cat_upright.png": upright,
        "odd/cat_cmyk.jpg": odd.cmyk_jpeg(cat), "odd/cat_grey16.png": odd.grey16_png(cat),
        "odd/cat_rgba.png": odd.rgba_png(cat), "odd/cat_palette.gif": odd.palette_gif(cat),
    })
    good = set(objects)
    bad = {f"bad/{name}": reason for name, (_, reason) in odd.bad_objects(cat).items()}
    objects.update({f"bad/{name}": data for name, (data, _) in odd.bad_objects(cat).items()})
    return objects, good, bad


@pytest.fixture(scope="session")
def object_set() -> tuple[dict[str, bytes], set[str], dict[str, str]]:
    return make_objects()


@pytest.fixture
def image_bucket(bucket: str, object_set: tuple[dict[str, bytes], set[str], dict[str, str]]
                 ) -> ImageBucket:
    objects, good, bad = object_set
    for key, data in objects.items():
        put(bucket, key, data)
    storage.s3_client().put_object(Bucket=bucket, Key="photos/", Body=b"")  # a folder marker
    return ImageBucket(bucket, objects, good, bad)


def config_for(input_uri: str, output: str, per_task: int = 4) -> BackfillConfig:
    info = describe_model("efficientnet_lite0")
    return BackfillConfig(input=input_uri, output=output, model=info.name,
                          model_version=info.version, dim=info.dim, device="cpu",
                          objects_per_task=per_task, io_threads=4, num_shards=3)


def small_image(seed: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    return odd.save(Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)), "PNG")


SEQUENTIAL = EngineOptions("sequential")
LOCAL_SPARK = EngineOptions("spark", "local[2]")
