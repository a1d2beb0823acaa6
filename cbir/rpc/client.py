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


# gRPC core's own text when the channel never reached a server; a server's message (e.g. the
# coordinator naming an unavailable shard) never starts with it.
_TRANSPORT_FAILURE = "failed to connect to all addresses"


def _transport_hint(details: str, address: str, secure: bool) -> str:
    """Why a call never reached the server at ``address``, in words a user can act on."""
    lowered = details.lower()
    if not secure and ("socket closed" in lowered or "connection reset" in lowered):
        return (f"the coordinator at {address} closed the connection: it may require TLS "
                f"(cbir: --tls-ca CA_FILE; mutual TLS also --tls-cert/--tls-key)")
    if secure and ("handshake" in lowered or "ssl" in lowered):
        return (f"TLS handshake with {address} failed: the server may not use TLS, or its "
                f"certificate is not signed by the --tls-ca given")
    return f"cannot reach the coordinator at {address}"


def error_from_rpc(exc: grpc.RpcError, address: str, secure: bool = False) -> errors.CbirError:
    """The cbir error a status code stands for, carrying the server's message. ``secure``:
    whether the client used TLS (it picks the hint when no connection could be made)."""
    code: grpc.StatusCode = exc.code()
    details = exc.details() or code.name
    exc_type = _ERROR_OF.get(code, ServerError)
    if code == grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_TRANSPORT_FAILURE):
        details = f"{_transport_hint(details, address, secure)}: {details}"
    return exc_type(f"{details} [{code.name}]")


def sync_channel(
    address: str, limits: Limits, security: ClientSecurity | None = None
) -> grpc.Channel:
    return client_sync_channel(address, security or ClientSecurity(), channel_options(limits))


def aio_channel(
    address: str, limits: Limits, security: ClientSecurity | None = None
) -> grpc.aio.Channel:
    return client_channel(address, security or ClientSecurity(), channel_options(limits))
