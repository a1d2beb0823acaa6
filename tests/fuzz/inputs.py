"""Hypothesis strategies for image bytes: random bytes, real encoded photos in six formats
truncated / bit-flipped / overwritten / spliced, and headers declaring tiny or huge sizes."""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

from hypothesis import strategies as st
from PIL import Image

from demo.photos import bundled_photos

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")


@lru_cache(maxsize=1)
def seeds() -> tuple[bytes, ...]:
    """Small real photos, encoded in every format PIL reads here."""
    out = []
    for photo in bundled_photos()[:3]:
        img = Image.fromarray(photo.pixels).resize((48, 36))
        for fmt in FORMATS:
            buf = io.BytesIO()
            (img.convert("P") if fmt == "GIF" else img).save(buf, format=fmt)
            out.append(buf.getvalue())
    return tuple(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, mode: int, depth: int, body: bytes) -> bytes:
    """A PNG whose header (valid CRC) declares any size/mode, followed by any IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(body))
            + _chunk(b"IEND", b""))


def bmp_declaring(width: int, height: int, bpp: int, body: bytes) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, len(body), 2835, 2835,
                         0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(body), 0, 0, 54) + header + body


def gif_declaring(width: int, height: int, body: bytes) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + b"\x00" * 6
            + b",\x00\x00\x00\x00" + struct.pack("<HH", width, height) + b"\x00\x02"
            + bytes([min(255, len(body))]) + body[:255] + b"\x00;")


def jpeg_with_size(seed: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker claims another size."""
    pos = max(seed.find(b"\xff\xc0"), seed.find(b"\xff\xc2"))
    if pos < 0:
        return seed
    return seed[: pos + 5] + struct.pack(">HH", height, width) + seed[pos + 9 :]


dims = st.one_of(st.integers(0, 4), st.integers(0, 70_000), st.integers(0, 2**31 - 1))
bodies = st.binary(max_size=512)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("flip", "set", "truncate", "splice", "insert")))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "splice":
            data[i:] = draw(st.binary(max_size=256))
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
    return bytes(data)


declared = st.one_of(
    st.builds(png_declaring, dims, dims, st.sampled_from((0, 2, 3, 4, 6, 1, 5)),
              st.sampled_from((1, 2, 4, 8, 16, 3)), bodies),
    st.builds(bmp_declaring, st.integers(-70_000, 70_000), st.integers(-70_000, 70_000),
              st.sampled_from((1, 4, 8, 16, 24, 32, 0, 7)), bodies),
    st.builds(gif_declaring, st.integers(0, 65535), st.integers(0, 65535), bodies),
    st.builds(lambda s, w, h: jpeg_with_size(s, w, h),
              st.sampled_from(seeds()).filter(lambda b: b[:2] == b"\xff\xd8"),
              st.integers(0, 65535), st.integers(0, 65535)),
)

image_bytes = st.one_of(st.binary(max_size=2048), mutated(), declared)


def png_zero_rows(width: int, height: int, mode: int, depth: int) -> bytes:
    """A REAL, valid PNG of ``width`` x ``height`` black pixels, compressed row by row (the
    test never holds the raw pixels): the 124 KB 8000x8000 16-bit grey PNG of issue 16 is
    ``png_zero_rows(8000, 8000, 0, 16)``."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[mode]
    row = b"\x00" * (1 + width * channels * depth // 8)  # filter byte 0 + the samples
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def tiny_gif_screen(width: int, height: int) -> bytes:
    """~40 bytes whose header claims a ``width`` x ``height`` logical screen."""
    return gif_declaring(width, height, b"")


def eps_document() -> bytes:
    """Encapsulated PostScript: PIL would run ghostscript on it if it were allowed to open it."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
            b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


@lru_cache(maxsize=1)
def hostile_queries() -> dict[str, bytes]:
    """The image queries issue 16 found to exhaust a coordinator's memory, plus EPS."""
    return {
        "png16_8000": png_zero_rows(8000, 8000, 0, 16),
        "rgba_8000": png_zero_rows(8000, 8000, 6, 8),
        "gif_screen_8000": tiny_gif_screen(8000, 8000),
        "eps": eps_document(),
    }


query_headers = st.one_of(
    st.builds(png_declaring, st.integers(1, 20_000), st.integers(1, 20_000),
              st.sampled_from((0, 2, 4, 6)), st.sampled_from((8, 16)), bodies),
    st.builds(gif_declaring, st.integers(1, 65535), st.integers(1, 65535), bodies),
    st.builds(bmp_declaring, st.integers(-20_000, 20_000), st.integers(-20_000, 20_000),
              st.sampled_from((8, 24, 32)), bodies),
    st.builds(lambda s, w, h: jpeg_with_size(s, w, h),
              st.sampled_from(seeds()).filter(lambda b: b[:2] == b"\xff\xd8"),
              st.integers(1, 65535), st.integers(1, 65535)),
)
