"""Images of indexed ids: key lookup through the coordinator, S3 read, thumbnails, LRU cache.

Only a key the coordinator returns for an id, and whose own image id is that id, ever reaches
S3: no path, URI or query parameter of a request is used as an object name.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from cbir import storage
from cbir.cache import ByteBudgetCache
from cbir.client import AsyncCoordinatorClient
from cbir.errors import CbirError, NotFound, ResourceExhausted
from cbir.ids import ID_MASK, image_id
from cbir.limits import Limits

# Hits asked for when looking an id up: the id's own vector is its best match, but exact
# duplicates tie at the same score (ties go by id), so ask for a few more than one.
KEY_LOOKUP_K = 16
THUMB_TYPE = "image/jpeg"


class StoredImageUnreadable(CbirError):
    """An indexed object can no longer be read as an image (changed in S3 after indexing)."""


@dataclass(frozen=True)
class ImageBytes:
    data: bytes
    content_type: str


def check_image_id(value: int) -> int:
    if not 0 <= value <= ID_MASK:
        raise NotFound(f"image id {value} is not indexed (ids are 63-bit non-negative)")
    return value


async def indexed_key(client: AsyncCoordinatorClient, wanted: int, timeout_s: float) -> str:
    """The key of an indexed image id, as the index itself holds it; NotFound otherwise.
    Asked on every image request (not cached), so an image deleted from the index stops being
    served at once; only the thumbnail bytes are cached."""
    result = await client.search_id(check_image_id(wanted), k=KEY_LOOKUP_K, timeout_s=timeout_s)
    for hit in result.hits:
        if hit.image_id == wanted and storage.is_s3(hit.key) and image_id(hit.key) == wanted:
            return hit.key
    raise NotFound(f"image id {wanted} is not indexed")


def read_object(key: str, limits: Limits) -> bytes:
    """The object's bytes, refusing (before reading) one larger than the image size cap."""
    loc = storage.parse_s3(key)
    client = storage.s3_client()
    try:
        reply = client.get_object(Bucket=loc.bucket, Key=loc.key)
    except (client.exceptions.NoSuchKey, client.exceptions.NoSuchBucket) as exc:
        raise NotFound(f"indexed image {key} is gone from the object store") from exc
    body = reply["Body"]
    try:
        if int(reply.get("ContentLength", 0)) > limits.max_image_bytes:
            raise ResourceExhausted(
                f"image {key} is larger than {limits.max_image_bytes} bytes")
        return bytes(body.read(limits.max_image_bytes + 1))
    finally:
        body.close()


def content_type(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their content (not the object's metadata)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError) as exc:
        raise StoredImageUnreadable("the stored object is not a readable image") from exc


def make_thumbnail(data: bytes, longest_side: int, limits: Limits) -> bytes:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > limits.max_image_pixels:
                raise ResourceExhausted(f"image has more than {limits.max_image_pixels} pixels")
            img.draft("RGB", (longest_side, longest_side))  # JPEG: decode at reduced size
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((longest_side, longest_side))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=85)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StoredImageUnreadable("the stored object is not a readable image") from exc


class ImageService:
    """``GET /api/images/{id}``: full images are read from S3; thumbnails are cached (LRU)."""

    def __init__(self, limits: Limits, thumb_px: int, cache_bytes: int) -> None:
        self.limits = limits
        self.thumb_px = thumb_px
        # Keyed by (id, key): an id's key never changes (the id is its hash).
        self.thumbs: ByteBudgetCache[ImageBytes] = ByteBudgetCache(
            cache_bytes, lambda item: len(item.data))

    async def full(self, key: str) -> ImageBytes:
        data = await asyncio.to_thread(read_object, key, self.limits)
        return ImageBytes(data, await asyncio.to_thread(content_type, data))

    async def thumbnail(self, wanted: int, key: str) -> ImageBytes:
        cached = self.thumbs.get((wanted, key))
        if cached is not None:
            return cached
        data = await asyncio.to_thread(read_object, key, self.limits)
        thumb = await asyncio.to_thread(make_thumbnail, data, self.thumb_px, self.limits)
        item = ImageBytes(thumb, THUMB_TYPE)
        self.thumbs.put((wanted, key), item)
        return item
