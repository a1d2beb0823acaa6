"""``POST /api/search``: the request (multipart image or JSON query) and the JSON answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from cbir import storage
from cbir.client import AsyncCoordinatorClient, SearchResult
from cbir.errors import InvalidArgument, ResourceExhausted
from cbir.filters import MAX_FILTER_CHARS
from cbir.ids import image_id
from cbir.limits import Limits
from web.images import check_image_id


class JsonQuery(BaseModel):
    """Exactly one of ``vector``, ``image_id``, ``key``. ``image_id`` may be a string: 63-bit
    ids do not survive JavaScript's numbers."""

    model_config = ConfigDict(extra="forbid")

    vector: list[float] | None = None
    image_id: int | None = Field(default=None, ge=0)
    key: str | None = None
    k: int | None = None
    exclude_query_image: bool = False
    # A metadata filter, e.g. "width >= 640 AND label IN ('cat')" (docs/filters.md).
    filter: str = Field(default="", max_length=MAX_FILTER_CHARS)


@dataclass(frozen=True)
class Query:
    k: int
    image: bytes | None = None
    vector: list[float] | None = None
    image_id: int | None = None
    exclude_query_image: bool = False
    filter: str = ""


def _k(value: Any, default: int, limits: Limits) -> int:
    try:
        k = default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"k must be an integer, got {value!r}") from None
    if not 1 <= k <= limits.max_k:
        raise InvalidArgument(f"k must be between 1 and {limits.max_k}, got {k}")
    return k


async def _upload(file: UploadFile, limits: Limits) -> bytes:
    data = await file.read(limits.max_image_bytes + 1)
    if len(data) > limits.max_image_bytes:
        raise ResourceExhausted(f"image is larger than {limits.max_image_bytes} bytes")
    if not data:
        raise InvalidArgument("the uploaded image is empty")
    return data


async def _from_form(request: Request, default_k: int, limits: Limits) -> Query:
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise InvalidArgument(f"malformed multipart body: {exc.message}") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidArgument("a multipart search needs a file field named 'image'")
        flt = form.get("filter") or ""
        if not isinstance(flt, str) or len(flt) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"filter must be text of at most {MAX_FILTER_CHARS} characters")
        return Query(k=_k(form.get("k"), default_k, limits), image=await _upload(upload, limits),
                     filter=flt)
    finally:
        await form.close()  # spooled upload files


async def _from_json(request: Request, default_k: int, limits: Limits) -> Query:
    try:
        body = JsonQuery.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"invalid JSON query: {where + ': ' if where else ''}"
                              f"{first['msg']}") from None
    given = [n for n in ("vector", "image_id", "key") if getattr(body, n) is not None]
    if len(given) != 1:
        raise InvalidArgument("a JSON query has exactly one of 'vector', 'image_id', 'key'")
    k = _k(body.k, default_k, limits)
    if body.vector is not None:
        return Query(k=k, vector=body.vector, filter=body.filter)
    wanted = body.image_id
    if body.key is not None:
        if not storage.is_s3(body.key):
            raise InvalidArgument(f"key must be an s3:// URI, got {body.key[:200]!r}")
        wanted = image_id(body.key)  # ids are hashes of keys: query by the id
    assert wanted is not None
    return Query(k=k, image_id=check_image_id(wanted),
                 exclude_query_image=body.exclude_query_image, filter=body.filter)


async def parse(request: Request, default_k: int, limits: Limits) -> Query:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _from_form(request, default_k, limits)
    if content_type == "application/json":
        return await _from_json(request, default_k, limits)
    raise InvalidArgument(
        "send multipart/form-data with an 'image' file, or application/json "
        '{"vector": [...]} | {"image_id": N} | {"key": "s3://..."}'
    )


async def run(client: AsyncCoordinatorClient, query: Query, timeout_s: float) -> SearchResult:
    if query.image is not None:
        return await client.search_image(query.image, k=query.k, timeout_s=timeout_s,
                                         filter=query.filter)
    if query.vector is not None:
        return await client.search_vector(query.vector, k=query.k, timeout_s=timeout_s,
                                          filter=query.filter)
    assert query.image_id is not None
    return await client.search_id(query.image_id, k=query.k, timeout_s=timeout_s,
                                  exclude_query_image=query.exclude_query_image,
                                  filter=query.filter)


def answer(result: SearchResult, started: float, base_path: str = "") -> dict[str, Any]:
    """The JSON answer; ``image_id_str`` carries the id exactly for JavaScript clients."""
    hits = [
        {
            "image_id": h.image_id, "image_id_str": str(h.image_id), "key": h.key,
            "score": h.score, "shard": h.shard,
            "thumbnail_url": f"{base_path}/api/images/{h.image_id}?size=thumb",
        }
        for h in result.hits
    ]
    return {
        "hits": hits, "partial": result.partial, "failed_shards": list(result.failed_shards),
        "index_version": result.index_version, "metric": result.metric,
        "request_id": result.request_id,
        "timing": {"total_ms": round((time.perf_counter() - started) * 1000, 2)},
    }
