"""Building a grpc.aio server with health, reflection, limits and graceful drain."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cbir import errors
from cbir.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)


def channel_options(limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, int]]:
    return [
        *channel_options(limits),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


def check_can_listen(host: str, port: int) -> None:
    """One clear error before gRPC tries (its own failure is a log line and a RuntimeError):
    the port is taken, or the host is not an address of this machine."""
    bare = host.strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(bare, port,
                                                              type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise errors.InvalidArgument(f"cannot listen on {host}:{port}: unknown host") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            reason = ("the port is in use (another server? pick another --port, or 0 for any "
                      "free port)" if exc.errno == errno.EADDRINUSE else exc.strerror)
            raise errors.FailedPrecondition(f"cannot listen on {host}:{port}: {reason}") from exc


class Serving:
    """A grpc.aio server plus its health servicer; ``start`` returns the bound port."""

    def __init__(
        self,
        service_names: Iterable[str],
        limits: Limits = DEFAULT_LIMITS,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.server = grpc.aio.server(
            options=server_options(limits), interceptors=list(interceptors)
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def bind(self, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
        address = f"{host}:{port}"
        check_can_listen(host, port)
        try:
            if credentials is None:
                bound = self.server.add_insecure_port(address)
            else:
                bound = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise errors.FailedPrecondition(f"cannot listen on {address}")
        return bound

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def drain_and_stop(self, grace_s: float) -> None:
        """Report NOT_SERVING first so balancers stop sending, then finish in-flight calls."""
        await self.set_serving(False)
        await self.server.stop(grace_s)

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                log.debug("cannot install handler for %s", sig)
