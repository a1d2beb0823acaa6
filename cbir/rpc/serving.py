"""Building a grpc.aio server with health, reflection, limits and graceful drain.

Per-connection limits (why each): ``max_concurrent_streams`` bounds how many requests one
connection can have in memory at once (each up to its method's byte budget, see
``cbir.rpc.request_limits``); idle connections are closed so a client that opens many and walks
away does not hold them; ``max_connection_age`` makes long-lived clients reconnect now and then,
which lets a Service spread them over new replicas, with a grace longer than the longest
deadline so no call is cut short.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
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
from cbir.rpc.request_limits import RequestGuard, request_byte_limits

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


MAX_CONCURRENT_STREAMS = 100  # per connection
MAX_CONNECTION_IDLE_MS = 5 * 60_000
MAX_CONNECTION_AGE_MS = 30 * 60_000


def server_options(
    limits: Limits = DEFAULT_LIMITS, receive_bytes: int | None = None, reuse_port: bool = False
) -> list[tuple[str, int]]:
    """``receive_bytes``: the transport's receive limit (default: limits.max_message_bytes).
    ``reuse_port``: share the port with the other workers of a ``--workers N`` server (off
    otherwise, so a second server on a taken port fails instead of silently sharing it)."""
    receive = limits.max_message_bytes if receive_bytes is None else receive_bytes
    grace_ms = int(limits.max_deadline_s * 1000) + 5_000  # the longest call still finishes
    options = [o for o in channel_options(limits) if o[0] != "grpc.max_receive_message_length"]
    return [
        *options,
        ("grpc.max_receive_message_length", receive),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", grace_ms),
    ]


def receive_limit(service_names: Iterable[str], byte_limits: dict[str, int]) -> int:
    """The largest request any method of these services accepts (at least a small one)."""
    prefixes = tuple(f"/{name}/" for name in service_names)
    own = [n for method, n in byte_limits.items() if method.startswith(prefixes)]
    return max([*own, 64 * 1024])


M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def return_large_buffers_to_the_os() -> bool:
    """Pin glibc's mmap threshold at its default 128 KiB. By default glibc raises it to the size
    of each large block freed (up to 32 MiB), after which request-sized buffers (a 20 MiB image,
    a refused 32 MiB message) come from the heap and stay in the process after they are freed:
    twenty large requests then leave a server hundreds of MB larger. Pinned, every such buffer
    is mapped and unmapped. False where the C library has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        # Fewer arenas: grpc's threads each filling a private arena with 16 KiB frame pieces
        # of one large message leaves every arena fragmented at that message's size.
        arenas = bool(libc.mallopt(M_ARENA_MAX, ARENA_MAX))
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and arenas
    except (OSError, AttributeError, TypeError):
        return False

def check_can_listen(host: str, port: int, reuse_port: bool = False) -> None:
    """One clear error before gRPC tries (its own failure is a log line and a RuntimeError):
    the port is taken (by anything but this server's workers, with ``reuse_port``), or the
    host is not an address of this machine."""
    bare = host.strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(bare, port,
                                                              type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise errors.InvalidArgument(f"cannot listen on {host}:{port}: unknown host") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
        reuse_port: bool = False,
    ) -> None:
        self.service_names = list(service_names)
        self.reuse_port = reuse_port
        byte_limits = request_byte_limits(limits)
        self.receive_bytes = receive_limit(self.service_names, byte_limits)
        guard = RequestGuard(byte_limits, default_bytes=self.receive_bytes)
        self.server = grpc.aio.server(
            options=server_options(limits, self.receive_bytes, reuse_port),
            interceptors=[*interceptors, guard],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def bind(self, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
        address = f"{host}:{port}"
        check_can_listen(host, port, self.reuse_port)
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
        return_large_buffers_to_the_os()
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
