"""Bearer tokens for ``/api/*`` (the same token files as the gRPC servers use).

The page, its assets, ``/healthz``, ``/metrics`` and the OpenAPI schema stay open like the gRPC
health service; the page asks for a token when the API answers 401.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from cbir.rpc.auth import ADMIN, SEARCH, parse_bearer
from web.config import WebConfig
from web.errors import ApiAuthError


def bearer_dependency(config: WebConfig) -> Callable[[Request], Coroutine[Any, Any, None]]:
    auth = config.security.auth

    async def require_token(request: Request) -> None:
        if auth is None:
            return
        token = parse_bearer([("authorization", v)
                              for v in request.headers.getlist("authorization")])
        grant = auth.match(token) if token is not None else None
        if grant is None:
            raise ApiAuthError("a valid 'Authorization: Bearer <token>' header is required")
        if not grant.roles & {SEARCH, ADMIN}:
            raise ApiAuthError("this token may not search", status=403)

    return require_token
