"""``cbir watch --queue SQS_URL --coordinator HOST:PORT``: S3 event notifications -> the live
index (cbir.watch does the work; here the coordinator client becomes its writer)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cbir.client import CoordinatorClient, UpsertSpec, WriteResult
from cbir.errors import Unavailable
from cbir.options import add_options, build, option
from cbir.rpc.security import add_security_arguments, client_security_from_args
from cbir.watch import Watcher, WriteOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchOptions:
    queue: str = option(required=True, metavar="SQS_URL",
                        help="the SQS queue receiving the bucket's event notifications")
    coordinator: str = option(required=True, metavar="HOST:PORT", help="the coordinator")
    wait_s: int = option(10, flag="--wait-seconds", positive=True, metavar="S",
                         help="SQS long-poll wait")
    timeout: float = option(60.0, positive=True, metavar="S",
                            help="seconds a write may take before the poll is retried")


class ClientWriter:
    """``ObjectWriter`` over the coordinator client. A log that could not be written
    ("unavailable: ...") raises, so the messages are redelivered instead of dropped."""

    def __init__(self, client: CoordinatorClient) -> None:
        self.client = client

    def upsert_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]:
        return self._outcomes(uris, self.client.upsert([UpsertSpec(u) for u in uris]))

    def delete_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]:
        return self._outcomes(uris, self.client.delete(keys=list(uris)))

    @staticmethod
    def _outcomes(uris: Sequence[str], results: list[WriteResult]) -> list[WriteOutcome]:
        for r in results:
            if not r.ok and r.reason.startswith("unavailable"):
                raise Unavailable(f"{r.key}: {r.reason}")
        return [WriteOutcome(uri, r.ok, r.reason) for uri, r in zip(uris, results, strict=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, WatchOptions)
    add_security_arguments(parser, server=False)


def sqs_client() -> Any:
    import boto3  # the AWS chain (AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL for local stacks)

    return boto3.client("sqs")


def run(args: argparse.Namespace) -> int:
    opts: WatchOptions = build(WatchOptions, args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with CoordinatorClient(opts.coordinator, timeout_s=opts.timeout,
                           security=client_security_from_args(args)) as client:
        watcher = Watcher(opts.queue, ClientWriter(client), sqs_client(), wait_s=opts.wait_s)
        print(f"watching {opts.queue}", flush=True)
        counts = watcher.run(stop)
    log.info("watch stopped: %s", counts)
    print(f"stopped: {counts}", flush=True)
    return 0
