"""Bytes -> model-ready pixels: the ONE preprocessing path used by the backfill and the query
path, so an image indexed in batch and the same image sent as a query give the same vector.

decode (PIL, only the allowlisted formats, size-checked from the header before any pixel is
decoded) -> reduced-size JPEG decoding when the image is much larger than the model input
(``draft``) -> a cap on the pixels actually decoded (queries) -> EXIF orientation -> RGB (alpha
composited on white, 16-bit scaled, CMYK/palette/grey converted) -> resize the shorter side +
center crop. Normalisation happens in the runtime's graph (see ``runtimes``), so worker threads
hand uint8.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cbir.errors import BadImage
from cbir.limits import DEFAULT_LIMITS, Limits

# EXIF orientations that swap width and height.
_TRANSPOSING = {5, 6, 7, 8}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_WHITE = (255, 255, 255)
# Formats PIL may open. Anything else (EPS above all: PIL would hand it to ghostscript, a
# PostScript interpreter) is refused before a plugin parses more than the magic bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_JPEG_FORMATS = {"JPEG", "MPO"}  # MPO (a camera's multi-picture JPEG) opens via the JPEG plugin


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that changes the pixels a model sees; part of the model version hash."""

    input_size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)  # on the 0..255 scale
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    resample: str = "bilinear"  # PIL's antialiased bilinear filter
    draft: bool = True  # JPEG DCT-domain downscaling to >= input_size before decoding

    def key(self) -> str:
        return (f"size={self.input_size};mean={self.mean};std={self.std};"
                f"resample={self.resample};draft={self.draft};crop=center-shorter")


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # (input_size, input_size, 3) uint8
    size: tuple[int, int]  # (width, height) of the full image, after EXIF orientation


def check_size(nbytes: int, limits: Limits) -> None:
    """Raises ``BadImage`` for a byte count no accepted image has; the backfill applies it to
    a listing's sizes so such objects are recorded without a GET."""
    if nbytes == 0:
        raise BadImage("empty", "zero bytes")
    if nbytes > limits.max_image_bytes:
        raise BadImage("too_large", f"{nbytes} bytes > limit {limits.max_image_bytes}")


def _open(data: bytes, limits: Limits) -> Image.Image:
    check_size(len(data), limits)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise BadImage("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not_an_image",
                       f"not one of the accepted formats ({', '.join(ALLOWED_FORMATS)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage("corrupt", str(exc)[:200]) from exc
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage("corrupt", f"invalid size {w}x{h}")
    if w * h > limits.max_image_pixels:
        raise BadImage("decompression_bomb", f"{w}x{h} pixels > limit {limits.max_image_pixels}")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: treat as upright rather than fail the image
        return 1


def _draft(img: Image.Image, draft_to: int | None) -> None:
    if draft_to and img.format in _JPEG_FORMATS and min(img.size) >= 2 * draft_to:
        # DCT-domain 1/2, 1/4, 1/8 scaling; keeps both sides >= draft_to. Only the header has
        # been read: img.size is now the size the decoder will produce.
        img.draft(img.mode, (draft_to, draft_to))


def check_decoded_pixels(img: Image.Image, cap: int | None) -> None:
    """Refuses, before decoding, an image whose decoded pixels (after draft) exceed ``cap``:
    decoding memory is pixels x bytes per pixel (<= 8 with 16-bit or alpha), so the cap bounds
    it whatever the bytes on the wire (a 39-byte GIF may declare an 8000x8000 screen)."""
    w, h = img.size
    if cap is not None and w * h > cap:
        raise BadImage("decompression_bomb", f"{w}x{h} = {w * h} pixels to decode (mode "
                       f"{img.mode}) > max_query_image_pixels {cap}")


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg or "broken data" in msg else "corrupt"
        raise BadImage(reason, msg[:200]) from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise BadImage("corrupt", str(exc)[:200]) from exc


def _sixteen_to_l(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int) grey -> 8 bit with a fixed scale ``v // 257`` (content
    independent), in the image's own integer width: no int64, one working copy."""
    arr = np.asarray(img)  # uint16 for I;16*, int32 for I
    if arr.dtype.itemsize > 2:
        arr = np.clip(arr, 0, 65535)  # the one copy; the rest happens in place
        np.floor_divide(arr, 257, out=arr)
    else:
        arr = arr // 257
    return Image.fromarray(arr.astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited on white (transparent = paper)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _SIXTEEN_BIT:
        img = _sixteen_to_l(img)
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "F":
        raise BadImage("unsupported_mode", "floating-point pixels")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise BadImage("unsupported_mode", f"mode {img.mode}: {exc}") from exc


def _decode(
    data: bytes, limits: Limits, draft_to: int | None, decoded_pixel_cap: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    img = _open(data, limits)
    w, h = img.size  # before draft: the size the object really has
    _draft(img, draft_to)
    check_decoded_pixels(img, decoded_pixel_cap)
    _load(img)
    # Only after load: PIL's PNG getexif() decodes the whole image to look for a late eXIf.
    if _orientation(img) in _TRANSPOSING:
        w, h = h, w
    # Malformed EXIF must not lose the image: keep it as stored.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return to_rgb(img), (w, h)


def decode_image(
    data: bytes, limits: Limits = DEFAULT_LIMITS, draft_to: int | None = None,
    decoded_pixel_cap: int | None = None,
) -> Image.Image:
    """Bytes -> RGB, EXIF-transposed PIL image. Raises ``BadImage(reason, detail)``.

    ``draft_to`` lets JPEG decoding skip resolution the model will never see (the returned
    image is then only guaranteed to have its shorter side >= draft_to); ``decoded_pixel_cap``
    refuses images that would decode to more pixels than that (checked from the header).
    """
    return _decode(data, limits, draft_to, decoded_pixel_cap)[0]


def center_crop_resize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to ``input_size`` and take the center square, in one resample."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    resample = Image.Resampling[spec.resample.upper()]
    out = img.resize(
        (spec.input_size, spec.input_size), resample, box=(left, top, left + side, top + side)
    )
    return np.asarray(out, dtype=np.uint8)


def prepare_bytes(
    data: bytes, spec: PreprocessSpec, limits: Limits = DEFAULT_LIMITS,
    decoded_pixel_cap: int | None = None,
) -> Prepared:
    """The shared path: bytes -> (uint8 pixels, original size). Raises ``BadImage``."""
    draft_to = spec.input_size if spec.draft else None
    rgb, size = _decode(data, limits, draft_to, decoded_pixel_cap)
    return Prepared(center_crop_resize(rgb, spec), size)


def prepare_image(img: Image.Image, spec: PreprocessSpec) -> Prepared:
    """An already-decoded image (no draft: full resolution) -> model pixels."""
    rgb = to_rgb(ImageOps.exif_transpose(img) or img)
    return Prepared(center_crop_resize(rgb, spec), rgb.size)


# PIL must report truncation instead of silently padding grey; another library may have
# flipped this global, so set it where decoding lives.
ImageFile.LOAD_TRUNCATED_IMAGES = False
