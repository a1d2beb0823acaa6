"""A request's size is decided before it is parsed: per-method byte budgets, quiet refusal of
bytes that do not parse, and caps on identifier strings (both servers install it via Serving).

Why an interceptor: grpc hands a server the raw request bytes and parses them with the
method's deserializer before any servicer code runs. A repeated field of 30M zeros is 30 MB on
the wire and a 30M-item Python list once converted; checking the byte length first costs
nothing. A deserializer that raises makes grpc log a traceback per request, so the wrapped
deserializer returns a marker instead and the wrapped behaviour answers with one status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from cbir.limits import Limits

log = logging.getLogger(__name__)

# Small control messages (Info, Stats, health, reflection) and anything not named below.
SMALL_REQUEST_BYTES = 64 * 1024
# Identifier strings a request may carry, and their longest allowed length. Longer or
# unprintable values are refused before a servicer can echo them into an error or a log.
STRING_CAPS: Mapping[str, int] = {"index_version": 128}


def request_byte_limits(limits: Limits) -> dict[str, int]:
    """The largest serialized request each method accepts; the transport's receive limit is
    the largest of a server's own methods (see docs/security.md, per-request limits)."""
    return {
        # An image query carries the image; a vector or id query needs a few KiB.
        "/cbir.v1.Coordinator/Search": min(limits.max_image_bytes + SMALL_REQUEST_BYTES,
                                           limits.max_message_bytes),
        # Up to max_batch queries (images included), within the transport's message cap.
        "/cbir.v1.Coordinator/SearchBatch": limits.max_message_bytes,
        "/cbir.v1.Coordinator/Info": SMALL_REQUEST_BYTES,
        # max_batch packed float32 query vectors.
        "/cbir.v1.Shard/Search": limits.max_message_bytes,
        # At most max_batch ids of at most 10 varint bytes each (+ tags, request id).
        "/cbir.v1.Shard/GetVectors": limits.max_batch * 11 + SMALL_REQUEST_BYTES,
        "/cbir.v1.Shard/Stats": SMALL_REQUEST_BYTES,
        "/cbir.v1.Shard/LoadIndex": SMALL_REQUEST_BYTES,
    }


@dataclass(frozen=True)
class _Refused:
    """What the wrapped deserializer returns instead of a message it will not build."""

    code: grpc.StatusCode
    message: str


def check_strings(request: Any) -> _Refused | None:
    for name, cap in STRING_CAPS.items():
        value = getattr(request, name, None)
        if not isinstance(value, str) or not value:
            continue
        if len(value) > cap or not value.isprintable():
            return _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{name} must be at most {cap} printable characters "
                            f"(got {len(value)} characters)")
    return None


def _deserializer(method: str, parse: Callable[[bytes], Any], max_bytes: int
                  ) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        if len(raw) > max_bytes:
            return _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"request of {len(raw)} bytes exceeds this method's limit of "
                            f"{max_bytes} bytes")
        try:
            request = parse(raw)
        except Exception:
            return _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{len(raw)} request bytes do not parse as this method's message")
        return check_strings(request) or request

    return deserialize


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _behaviour(method: str, inner: Behaviour) -> Behaviour:
    async def behave(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Refused):
            # One line, no traceback: a flood of garbage must not flood the log with stacks.
            log.warning("refused %s: %s", method, request.message)
            await context.abort(request.code, request.message)
        # Handed over without this frame keeping it: if the call is aborted, the abort's
        # reference cycle (see cbir.rpc.status) must not hold a large request.
        box = [request]
        del request
        return await inner(box.pop(), context)

    return behave


class RequestGuard(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers: byte budget, parse failure and string caps, all answered
    with a status before the servicer runs. Streaming handlers pass through unchanged."""

    def __init__(self, byte_limits: Mapping[str, int], default_bytes: int) -> None:
        self.byte_limits = dict(byte_limits)
        self.default_bytes = default_bytes
        # Wrapped once per method (the servicer's handler objects do not change): this runs
        # on every call, so no closures or handler copies per request.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: not cached (its name is the caller's choice)
            return handler
        method = str(handler_call_details.method)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        parse = getattr(handler, "request_deserializer", None)
        inner = getattr(handler, "unary_unary", None)
        if parse is None or inner is None:
            return handler
        max_bytes = self.byte_limits.get(method, self.default_bytes)
        return handler._replace(
            request_deserializer=_deserializer(method, parse, max_bytes),
            unary_unary=_behaviour(method, inner),
        )
