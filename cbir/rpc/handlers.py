"""Method handlers that stand in for a servicer's: the server interceptors decide *whether* a
call may run from its metadata, but only a handler sees the ``ServicerContext`` (the peer's
address), so a refusal that depends on the peer is made here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Refusal = tuple[grpc.StatusCode, str]
# Called once per call with its context; None lets the call run.
Check = Callable[[grpc.aio.ServicerContext], Refusal | None]


Decide = Callable[[grpc.aio.ServicerContext], Refusal]


def refusing_handler(handler: grpc.RpcMethodHandler, decide: Decide) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s streaming kind that always aborts with ``decide(context)``.
    The request is left raw (no deserializer): a refused caller's bytes are never parsed."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(*decide(context))

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(*decide(context))
        yield  # pragma: no cover  (makes this an async generator, as streaming responses are)

    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, None, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, None, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, None, serializer)
    return grpc.unary_unary_rpc_method_handler(abort, None, serializer)


def checked_handler(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """``handler`` with ``check(context)`` run first; a refusal aborts before the servicer."""
    behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                 or handler.stream_stream)

    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if (refusal := check(context)) is not None:
            await context.abort(*refusal)
        return await behaviour(request, context)

    async def run_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if (refusal := check(context)) is not None:
            await context.abort(*refusal)
        result = behaviour(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:  # a streaming handler that writes with context.write and returns
            await result

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(run_stream, de, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(run, de, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(run_stream, de, ser)
    return grpc.unary_unary_rpc_method_handler(run, de, ser)
