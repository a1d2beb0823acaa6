"""Replica discovery as it runs in Kubernetes, with real processes: dnsmasq on 127.0.0.1 plays
the cluster DNS of the headless Services (one A record per ready replica), `cbir serve-shard`
processes on 127.0.0.2.. play the replicas, and a `cbir serve-coordinator` process resolves
`shard-{shard}.cbir.test` through it. The shard-0 name goes 2 -> 3 -> 1 replicas (kubectl scale
up, then down) while queries run without a pause: the coordinator must route to exactly the live
set within its re-resolve interval, and no query may fail or come back partial."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cbir.client import CoordinatorClient
from demo.processes import ChildProcesses, cbir_command
from protos import cbir_pb2, cbir_pb2_grpc
from tests.conftest import free_port
from tests.shard_server.conftest import build

pytestmark = pytest.mark.slow
SHARD0 = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
SHARD1 = "127.0.0.5"


def _eventually(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class Dnsmasq:
    """dnsmasq answering A records from a hosts file; SIGHUP re-reads it (a scale event)."""

    def __init__(self, tmp: Path) -> None:
        self.hosts = tmp / "hosts"
        self.port = free_port()
        self.set({})
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
               "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
               f"--addn-hosts={self.hosts}", "--local-ttl=0", "--pid-file=", "--log-facility=-"]
        if os.geteuid() == 0:
            cmd.append("--user=root")  # else it drops to nobody, who cannot read tmp_path
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def set(self, records: dict[str, list[str]]) -> None:
        self.hosts.write_text("".join(f"{ip} {name}\n" for name, ips in records.items()
                                      for ip in ips))

    def reload(self, records: dict[str, list[str]]) -> None:
        self.set(records)
        self.proc.send_signal(signal.SIGHUP)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _served(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stats = cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5)
    return int(stats.queries_served)


class QueryLoop:
    """Queries the coordinator back to back; every answer must equal the steady-state one."""

    def __init__(self, address: str, vectors: list[list[float]]) -> None:
        self.client = CoordinatorClient(address)
        self.vectors = vectors
        self.expected = [self._ids(v) for v in vectors]
        self.count = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ids(self, vector: list[float]) -> list[int]:
        result = self.client.search_vector(vector, k=5)
        assert not result.partial
        return [h.image_id for h in result.hits]

    def _run(self) -> None:
        while not self._stop.is_set():
            i = self.count % len(self.vectors)
            try:
                result = self.client.search_vector(self.vectors[i], k=5)
                if result.partial or [h.image_id for h in result.hits] != self.expected[i]:
                    self.problems.append(f"query {self.count}: partial={result.partial}")
            except Exception as exc:  # any failure is what this test is about
                self.problems.append(f"query {self.count}: {exc!r}")
            self.count += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Dnsmasq, ChildProcesses, int]]:
    """dnsmasq plus every shard replica serving (a replica that dies fails at once, quoting
    its log); the test starts the coordinator in the same group, all stopped at teardown."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq)")
    index = build(tmp_path, "idx")
    port = free_port()
    dns = Dnsmasq(tmp_path)
    try:
        with ChildProcesses(tmp_path / "logs") as procs:
            for host, shard in [*((h, 0) for h in SHARD0), (SHARD1, 1)]:
                procs.start(host, cbir_command(
                    "serve-shard", f"--index={index.root}", f"--shard={shard}",
                    f"--host={host}", f"--port={port}", "--drain-seconds=1"))
            for host in [*SHARD0, SHARD1]:
                procs.wait_serving(f"{host}:{port}", "cbir.v1.Shard", timeout_s=120)
            yield dns, procs, port
    finally:
        dns.close()


def test_coordinator_follows_dns_scale_up_and_down(
    cluster: tuple[Dnsmasq, ChildProcesses, int]
) -> None:
    dns, procs, port = cluster
    shards = {name: proc for name, proc, _ in procs.children}
    records = {"shard-0.cbir.test": SHARD0[:2], "shard-1.cbir.test": [SHARD1]}
    dns.reload(records)
    coord_port = free_port()
    procs.start("coordinator", cbir_command(
        "serve-coordinator", f"--shard-dns=shard-{{shard}}.cbir.test:{port}", "--shards=2",
        f"--dns-server=127.0.0.1:{dns.port}", "--resolve-interval=0.5", "--no-image-queries",
        # The loop repeats 4 queries: with the answer cache on, they would stop reaching the
        # shards, and this test counts which replicas serve them.
        "--result-cache-bytes=0",
        "--host=127.0.0.1", f"--port={coord_port}"))
    address = f"127.0.0.1:{coord_port}"
    loop = None
    try:
        procs.wait_serving(address, "cbir.v1.Coordinator", timeout_s=120)
        loop = QueryLoop(address, [[float((i * 7 + j) % 5) for j in range(16)] for i in range(4)])
        info = loop.client.info

        def served() -> dict[str, int]:
            return {h: _served(f"{h}:{port}") for h in SHARD0}

        # Two replicas: both take queries, the third (not in DNS) none.
        assert _eventually(lambda: info().live_replicas == {0: 2, 1: 1})
        assert _eventually(lambda: all(served()[h] > 0 for h in SHARD0[:2]))
        assert served()[SHARD0[2]] == 0
        # Scale up: the new replica gets queries without a coordinator restart.
        records["shard-0.cbir.test"] = SHARD0
        dns.reload(records)
        assert _eventually(lambda: info().live_replicas == {0: 3, 1: 1})
        assert _eventually(lambda: served()[SHARD0[2]] > 0)
        # Scale down to one: the removed replicas leave DNS first, then drain and stop.
        records["shard-0.cbir.test"] = [SHARD0[1]]
        dns.reload(records)
        assert _eventually(lambda: info().live_replicas == {0: 1, 1: 1})
        before = served()
        assert _eventually(lambda: served()[SHARD0[1]] >= before[SHARD0[1]] + 20)
        gone = {h: served()[h] for h in (SHARD0[0], SHARD0[2])}
        assert _eventually(lambda: served()[SHARD0[1]] >= before[SHARD0[1]] + 40)
        assert {h: served()[h] for h in gone} == gone  # nothing routed to them any more
        for host in gone:
            shards[host].send_signal(signal.SIGTERM)
            shards[host].wait(30)
        count = loop.count
        assert _eventually(lambda: loop.count >= count + 20)
    finally:
        if loop is not None:
            loop.stop()
    assert loop.problems == [], loop.problems[:5]
    assert loop.count > 50
