"""Client-side health checks (grpc.health.v1), used by the demo, tests and the coordinator."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 1.0) -> bool:
    """True when ``address`` reports SERVING for ``service``."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(
    address: str,
    service: str = "",
    timeout_s: float = 120.0,
    between_checks: Callable[[], None] | None = None,
) -> None:
    """Block until SERVING; TimeoutError names the address after ``timeout_s``.
    ``between_checks`` runs before each check (e.g. to fail fast when the server died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if between_checks is not None:
            between_checks()
        if check(address, service):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{address} did not report SERVING for {service!r} in {timeout_s:.0f}s")
