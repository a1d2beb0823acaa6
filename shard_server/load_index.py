"""``python -m shard_server.load_index ADDRESS INDEX_URI``: the operator's manual LoadIndex.

Meant for the loopback admin port from inside a pod (``kubectl exec``) or through ``kubectl
port-forward``; the client security flags (``--tls-ca``, ``--auth-token-file``...) reach a port
that wants TLS or a token. Exit 0 when the replica swapped, 1 when it refused (the status and
its reason on stderr), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from cbir.errors import CbirError
from cbir.rpc.security import add_security_arguments, client_security_from_args, client_sync_channel
from protos import cbir_pb2, cbir_pb2_grpc

PROG = "python -m shard_server.load_index"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    p.add_argument("address", help="HOST:PORT of the replica, e.g. 127.0.0.1:50052")
    p.add_argument("index_uri", help="the index version root to load (holds shard=NNN/)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds the load may take (download + checks)")
    add_security_arguments(p, server=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        security = client_security_from_args(args)
    except CbirError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    with client_sync_channel(args.address, security) as channel:
        try:
            reply = cbir_pb2_grpc.ShardStub(channel).LoadIndex(
                cbir_pb2.LoadIndexRequest(index_uri=args.index_uri), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{PROG}: refused: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(reply.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
