"""Real image files in the awkward shapes a bucket really holds (made with PIL from bundled
photos): odd modes, EXIF rotation, and the bad objects a backfill must survive."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def small(pixels: np.ndarray, width: int = 320) -> Image.Image:
    img = Image.fromarray(pixels)
    height = max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.Resampling.BICUBIC)


def exif_rotated_pair(img: Image.Image) -> tuple[bytes, bytes]:
    """(PNG stored sideways + EXIF orientation 6, PNG physically upright): same picture.
    Lossless so the two must embed to the same vector."""
    upright = img.convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return save(stored, "PNG", exif=exif.tobytes()), save(upright, "PNG")


def cmyk_jpeg(img: Image.Image) -> bytes:
    return save(img.convert("CMYK"), "JPEG", quality=95)


def grey16_png(img: Image.Image) -> bytes:
    grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    return save(Image.fromarray(grey), "PNG")


def rgba_png(img: Image.Image, transparent_box: bool = True) -> bytes:
    rgba = img.convert("RGBA")
    if transparent_box:
        alpha = np.full((rgba.height, rgba.width), 255, dtype=np.uint8)
        alpha[: rgba.height // 3, : rgba.width // 3] = 0
        rgba.putalpha(Image.fromarray(alpha))
    return save(rgba, "PNG")


def white_boxed(img: Image.Image) -> Image.Image:
    """What rgba_png(img) should look like once composited on white."""
    arr = np.array(img.convert("RGB"))
    arr[: img.height // 3, : img.width // 3] = 255
    return Image.fromarray(arr)


def palette_gif(img: Image.Image) -> bytes:
    return save(img.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def truncated_jpeg(img: Image.Image) -> bytes:
    data = save(img.convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    """A ~10 KB PNG claiming 10000x10000 pixels (over the 64 MP limit)."""
    return save(Image.new("1", (10_000, 10_000)), "PNG")


def bad_objects(img: Image.Image) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason)."""
    return {
        "notes.txt": (b"this is not an image, just text\n" * 4, "not_an_image"),
        "truncated.jpg": (truncated_jpeg(img), "truncated"),
        "empty.jpg": (b"", "empty"),
        "bomb.png": (decompression_bomb(), "decompression_bomb"),
    }
