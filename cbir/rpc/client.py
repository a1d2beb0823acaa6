"""Client-side gRPC details: channels to a coordinator and status codes -> cbir.errors."""

from __future__ import annotations

import grpc

from cbir import errors
from cbir.limits import Limits
from cbir.rpc.security import ClientSecurity, client_channel, client_sync_channel
from cbir.rpc.serving import channel_options
from cbir.rpc.status import STATUS_OF

# One class for one meaning: the call did not finish within its timeout (an Unavailable).
DeadlineExceeded = errors.DeadlineExceeded


class ServerError(errors.CbirError):
    """The server failed in a way the caller cannot fix (INTERNAL, UNKNOWN, ...)."""


_ERROR_OF: dict[grpc.StatusCode, type[errors.CbirError]] = {
    code: exc_type for exc_type, code in STATUS_OF if issubclass(exc_type, errors.CbirError)
}
_ERROR_OF[grpc.StatusCode.DEADLINE_EXCEEDED] = DeadlineExceeded
_ERROR_OF[grpc.StatusCode.CANCELLED] = errors.Unavailable


def error_from_rpc(exc: grpc.RpcError, address: str) -> errors.CbirError:
    """The cbir error a status code stands for, carrying the server's message."""
    code: grpc.StatusCode = exc.code()
    details = exc.details() or code.name
    exc_type = _ERROR_OF.get(code, ServerError)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        details = f"cannot reach the coordinator at {address}: {details}"
    return exc_type(f"{details} [{code.name}]")


def sync_channel(
    address: str, limits: Limits, security: ClientSecurity | None = None
) -> grpc.Channel:
    return client_sync_channel(address, security or ClientSecurity(), channel_options(limits))


def aio_channel(
    address: str, limits: Limits, security: ClientSecurity | None = None
) -> grpc.aio.Channel:
    return client_channel(address, security or ClientSecurity(), channel_options(limits))
