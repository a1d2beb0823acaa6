from __future__ import annotations

import subprocess
import sys

import numpy as np

from cbir.ids import ID_MASK, image_id, shard_of, shards_of


def test_image_id_is_63_bit_and_stable_across_processes() -> None:
    uri = "s3://bucket/photos/a.jpg"
    here = image_id(uri)
    other = subprocess.run(
        [sys.executable, "-c", f"from cbir.ids import image_id; print(image_id({uri!r}))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert int(other) == here
    assert 0 <= here <= ID_MASK


def test_image_id_depends_on_the_full_uri() -> None:
    assert image_id("s3://a/k.jpg") != image_id("s3://b/k.jpg")
    assert image_id("s3://a/k.jpg") != image_id("s3://a/k.jpeg")


def test_shards_vectorised_matches_scalar() -> None:
    ids = np.array([image_id(f"s3://b/{i}") for i in range(1000)], dtype=np.int64)
    got = shards_of(ids, 7)
    assert got.dtype == np.int32
    assert [shard_of(int(i), 7) for i in ids] == got.tolist()
    assert set(got.tolist()) == set(range(7))  # 1000 hashes cover 7 shards
