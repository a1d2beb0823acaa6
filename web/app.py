"""The FastAPI application: routes of the HTTP/JSON API, the page and its assets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cbir.client import AsyncCoordinatorClient, CoordinatorInfo
from cbir.errors import CbirError
from web import errors, search
from web.auth import bearer_dependency
from web.config import WebConfig
from web.images import ImageService, indexed_key
from web.metrics import WebMetrics
from web.middleware import BodyLimit, MetricsAndHeaders

STATIC = Path(__file__).parent / "static"
# Multipart framing and form fields around the image; a JSON vector of a few thousand floats.
BODY_OVERHEAD_BYTES = 256 * 1024
HEALTH_TIMEOUT_S = 2.0

SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"},
                               "k": {"type": "integer"}}}},
            "application/json": {"schema": search.JsonQuery.model_json_schema()},
        },
    }
}


def _client(request: Request) -> AsyncCoordinatorClient:
    client: AsyncCoordinatorClient = request.app.state.client
    return client


def info_json(info: CoordinatorInfo) -> dict[str, Any]:
    return {
        "num_shards": info.num_shards,
        "live_replicas": {str(s): n for s, n in sorted(info.live_replicas.items())},
        "replicas": {str(s): n for s, n in sorted(info.replicas.items())},
        "images": {str(s): n for s, n in sorted(info.shard_counts.items())},
        "total_images": sum(info.shard_counts.values()),
        "shards_without_replicas": [s for s in range(info.num_shards)
                                    if info.live_replicas.get(s, 0) == 0],
        "index_version": info.index_version, "model": info.model,
        "model_version": info.model_version, "dim": info.dim, "metric": info.metric,
    }


def api_router(config: WebConfig, images: ImageService, metrics: WebMetrics) -> APIRouter:
    router = APIRouter(prefix="/api", dependencies=[Depends(bearer_dependency(config))])

    @router.post("/search", openapi_extra=SEARCH_BODY,
                 summary="similar images by uploaded image, vector, image id or key")
    async def search_images(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        query = await search.parse(request, config.default_k, config.limits)
        result = await search.run(_client(request), query, config.timeout_s)
        if result.partial:
            metrics.partial.inc()
        return search.answer(result, started, request.scope.get("root_path", ""))

    @router.get("/images/{image_id}", summary="an indexed image (thumbnail or full size)",
                response_class=Response,
                responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    async def get_image(request: Request, image_id: int,
                        size: Literal["thumb", "full"] = "thumb") -> Response:
        key = await indexed_key(_client(request), image_id, config.timeout_s)
        if size == "full":
            image = await images.full(key)
        else:
            hits = images.thumbs.hits
            image = await images.thumbnail(image_id, key)
            metrics.thumb_cache_hits.inc(images.thumbs.hits - hits)
            metrics.thumb_cache_bytes.set(images.thumbs.stats().bytes)
        return Response(image.data, media_type=image.content_type,
                        headers={"Cache-Control": "private, max-age=300"})

    @router.get("/info", summary="the cluster: shards, live replicas, index version, model")
    async def get_info(request: Request) -> dict[str, Any]:
        return info_json(await _client(request).info(timeout_s=config.timeout_s))

    return router


def create_app(config: WebConfig) -> FastAPI:
    metrics = WebMetrics()
    images = ImageService(config.limits, config.thumb_px, config.thumb_cache_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # grpc.aio channels belong to the loop that serves: create it here, not at import.
        app.state.client = AsyncCoordinatorClient(
            config.coordinator, timeout_s=config.timeout_s, limits=config.limits,
            security=config.coordinator_security)
        try:
            yield
        finally:
            await app.state.client.close()

    # No /docs: Swagger UI loads its assets from a CDN; the schema is at /api/openapi.json.
    app = FastAPI(title="cbir", summary="content-based image retrieval: HTTP/JSON API",
                  openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    errors.install(app)
    app.include_router(api_router(config, images, metrics))
    _add_page_routes(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_image_bytes + BODY_OVERHEAD_BYTES)
    app.add_middleware(MetricsAndHeaders, metrics=metrics)
    app.state.metrics = metrics
    app.state.images = images
    return app


def _add_page_routes(app: FastAPI, metrics: WebMetrics) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="200 when the coordinator answers, else 503")
    async def healthz(request: Request) -> JSONResponse:
        try:
            await _client(request).info(timeout_s=HEALTH_TIMEOUT_S)
        except CbirError as exc:
            return errors.error_response(503, f"coordinator unavailable: {exc}")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


