"""The one table mapping core exceptions to gRPC status codes."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from cbir import errors

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),  # before its base class
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for exc_type, code in STATUS_OF:
        if isinstance(exc, exc_type):
            return code
    return grpc.StatusCode.INTERNAL


R = TypeVar("R")


@contextmanager
def outcome_recorded(record: Callable[[str, float], None]) -> Iterator[None]:
    """Run a block, then ``record(status name, seconds)``: OK, CANCELLED when the caller went
    away, else the status its error maps to. For the servers' metrics and access lines."""
    start, code = time.perf_counter(), "OK"
    try:
        yield
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception as exc:
        code = status_for(exc).name
        raise
    finally:
        record(code, time.perf_counter() - start)


def grpc_errors(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorate an async servicer method: core errors become status codes with their message;
    anything unexpected becomes INTERNAL with a generic message (details go to the log only)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except errors.CbirError as exc:
            code, message = status_for(exc), str(exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error (see server log)"
        # grpc's abort raises an exception that ends up in a reference cycle with the frames
        # it passes through; whatever those frames hold lives until a gc pass. So the abort
        # happens outside the except block (no chained core error) and after dropping the
        # request, which may be as large as the message limit.
        del request
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper
