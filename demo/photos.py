"""Real photos that ship inside installed packages (no download): scikit-image's bundled data
and scikit-learn's sample images. Used by the demo, the tests and the benchmarks, with seeded
edits (crop, rotate, flip, colour, JPEG quality) as honest near-duplicates."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# scikit-image images that load offline ("cat" is omitted: it is "chelsea" again).
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
    "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel", "logo",
    "camera", "moon", "page", "coins", "horse", "text", "grass", "gravel", "brick",
    "rough_wall", "clock", "microaneurysms", "eagle", "lily", "skin", "kidney",
)


@dataclass(frozen=True)
class Photo:
    name: str
    pixels: np.ndarray  # HxWx3 uint8


def _as_rgb(arr: np.ndarray) -> np.ndarray | None:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return None
        arr = ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim == 4:  # e.g. lily is a 4-channel microscope stack
        return None
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    arr = arr[..., :3]
    if min(arr.shape[:2]) < 64:
        return None
    return np.ascontiguousarray(arr)


def bundled_photos() -> list[Photo]:
    """Every bundled photo that loads offline, sorted by name (deterministic)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: dict[str, Photo] = {}
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            rgb = _as_rgb(loader())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # Some loaders need pooch/network for big files; under pytest skimage signals
            # that with pytest.skip (a BaseException), which must not skip the caller's test.
            continue
        if rgb is not None:
            photos[name] = Photo(name, rgb)
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images, strict=True):
        name = "sklearn_" + fname.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        photos[name] = Photo(name, np.ascontiguousarray(img))
    return [photos[n] for n in sorted(photos)]


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


Edit = Callable[[np.ndarray, random.Random], tuple[np.ndarray, int]]


def _crop(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, int]:
    h, w = px.shape[:2]
    f = rng.uniform(0.75, 0.9)
    ch, cw = int(h * f), int(w * f)
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    return px[y : y + ch, x : x + cw], 90


def _rotate(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, int]:
    from PIL import Image

    angle = rng.uniform(-15, 15)
    return np.asarray(Image.fromarray(px).rotate(angle, resample=Image.Resampling.BILINEAR)), 90


def _flip(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, int]:
    return np.ascontiguousarray(px[:, ::-1]), 90


def _colour(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, int]:
    gain = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
    bright = rng.uniform(-20, 20)
    out = np.clip(px.astype(np.float32) * gain + bright, 0, 255)
    return out.astype(np.uint8), 90


def _jpeg(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, int]:
    return px, rng.randint(15, 35)


EDITS: dict[str, Edit] = {
    "crop": _crop, "rotate": _rotate, "flip": _flip, "colour": _colour, "jpeg": _jpeg,
}


def edited_copies(photo: Photo, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """(edit name, JPEG bytes) for each seeded edit of a photo."""
    for name, edit in EDITS.items():
        rng = random.Random(f"{seed}:{photo.name}:{name}")
        pixels, quality = edit(photo.pixels, rng)
        yield name, encode_jpeg(pixels, quality)
