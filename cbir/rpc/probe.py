"""A health probe that speaks TLS / mutual TLS, for Kubernetes ``exec`` probes.

Kubernetes' built-in ``grpc:`` probe dials plaintext only, so once a server serves TLS the probe
must run in the pod and dial with the pod's own files:

    python -m cbir.rpc.probe 127.0.0.1:50051 --tls-ca /etc/cbir/ca/ca.crt \
        --tls-server-name cbir-shard \
        --tls-cert /etc/cbir/tls/tls.crt --tls-key /etc/cbir/tls/tls.key

Exit status 0 when the server reports SERVING for ``--service`` (default: the whole server),
1 otherwise. Health is exempt from bearer tokens, so none is needed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.errors import CbirError
from cbir.rpc.security import (
    ClientSecurity,
    add_security_arguments,
    client_security_from_args,
    client_sync_channel,
)

log = logging.getLogger(__name__)


def check(
    address: str, security: ClientSecurity, service: str = "", timeout_s: float = 2.0
) -> bool:
    """True when ``address`` reports SERVING for ``service`` over the given security."""
    with client_sync_channel(address, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            log.warning("health check of %s failed: %s", address, exc.code())
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cbir.rpc.probe", description=__doc__)
    parser.add_argument("address", help="host:port to check")
    parser.add_argument("--service", default="", help="service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    add_security_arguments(parser, server=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        security = client_security_from_args(args)
    except CbirError as exc:
        log.error("%s", exc)
        return 2
    return 0 if check(args.address, security, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
