"""The one table mapping cbir errors to HTTP statuses, and the JSON error body.

Every error answer is ``{"error": "<one line>", "status": <code>}``; unexpected exceptions
answer 500 with a generic message (the details go to the log only).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cbir import errors
from cbir.rpc.client import DeadlineExceeded

log = logging.getLogger(__name__)

# Order matters: subclasses first (DeadlineExceeded is an Unavailable).
HTTP_STATUS_OF: tuple[tuple[type[errors.CbirError], int], ...] = (
    (DeadlineExceeded, 504),
    (errors.ResourceExhausted, 413),
    (errors.NotFound, 404),
    (errors.InvalidArgument, 400),
    (errors.FailedPrecondition, 409),
    (errors.Unavailable, 503),
    # Our own credentials were refused by the coordinator: a misconfigured gateway.
    (errors.Unauthenticated, 502),
    (errors.PermissionDenied, 502),
)


class ApiAuthError(errors.CbirError):
    """/api/* without a valid bearer token (401) or with one lacking the role (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def http_status(exc: errors.CbirError) -> int:
    for exc_type, status in HTTP_STATUS_OF:
        if isinstance(exc, exc_type):
            return status
    return 502  # ServerError and friends: the coordinator failed


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _cbir_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.CbirError)
    if isinstance(exc, ApiAuthError):
        return error_response(exc.status, str(exc))
    status = http_status(exc)
    if status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return error_response(status, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
    return error_response(400, f"invalid request: {message}")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal error (see the server log)")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CbirError, _cbir_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
