"""Chaos for the live index: a stream of writes and queries while a replica and one of two
coordinator processes are SIGKILLed and restarted. Afterwards every acknowledged upsert is
served by every replica and no acknowledged delete comes back; no query fails. Prints counts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cbir.client import CoordinatorClient, UpsertSpec
from cbir.ids import image_id, shard_of
from tests.reliability.cluster import ROOT, SHARDS, ShardProcess
from tests.reliability.test_live_index import eventually, replica_top_k, vec

RUN_S = 12.0


class CoordinatorProcess:
    def __init__(self, topology: Path, wal: str, log: Path) -> None:
        self.topology, self.wal, self.log = topology, wal, log
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-c", "import sys; from cbir.cli import main; sys.exit(main())",
               "serve-coordinator", "--topology", str(self.topology), "--port", str(self.port),
               "--no-image-queries", "--wal", self.wal, "--version-interval", "0.3",
               "--reprobe-interval", "0.2", "--resolve-interval", "1"]
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])
        with CoordinatorClient(f"127.0.0.1:{self.port}") as client:
            eventually(lambda: _ready(client), timeout_s=60)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _ready(client: CoordinatorClient) -> bool:
    try:
        client.info(timeout_s=1)
        return True
    except Exception:
        return False


class Load:
    """Writes (upserts, every third followed by a delete of an earlier key) alternating over
    the coordinators, retried on the other one when one is down; queries on the one that is
    never killed."""

    def __init__(self, coordinators: list[CoordinatorProcess]) -> None:
        self.coordinators = coordinators
        self.acked: dict[str, np.ndarray] = {}
        self.deleted: set[str] = set()
        self.counts = {"writes": 0, "write_retries": 0, "deletes": 0, "queries": 0,
                       "failed_queries": 0, "partial": 0}
        self.stop = threading.Event()
        self.rng = random.Random(1)

    def write_one(self, i: int) -> None:
        key, vector = f"s3://photos/chaos/{i}.jpg", vec(10_000 + i)
        for attempt in range(20):
            port = self.coordinators[(i + attempt) % 2].port
            try:
                with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5) as client:
                    if not client.upsert([UpsertSpec(key, vector=vector)])[0].ok:
                        continue
                    self.acked[key] = vector
                    self.counts["writes"] += 1
                    if i % 3 == 2:
                        victim = self.rng.choice(sorted(set(self.acked) - self.deleted))
                        if client.delete(keys=[victim])[0].ok:
                            self.deleted.add(victim)
                            self.counts["deletes"] += 1
                    return
            except Exception:
                self.counts["write_retries"] += 1
                time.sleep(0.1)

    def writer(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.write_one(i)
            i += 1

    def querier(self) -> None:
        port = self.coordinators[1].port
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5) as client:
            while not self.stop.is_set():
                keys = sorted(self.acked)
                query = self.acked[keys[-1]] if keys else vec(1)
                try:
                    result = client.search_vector(query, k=10)
                    self.counts["queries"] += 1
                    self.counts["partial"] += int(result.partial)
                except Exception:
                    self.counts["failed_queries"] += 1
                time.sleep(0.01)

    def converged(self, replicas: list[list[ShardProcess]]) -> bool:
        for key, vector in self.acked.items():
            row = replicas[shard_of(image_id(key), SHARDS)]
            for r in row:
                top = replica_top_k(r, vector)
                if key in self.deleted and image_id(key) in top:
                    return False
                if key not in self.deleted and top[:1] != [image_id(key)]:
                    return False
        return True


def test_chaos_writes_and_queries(live_cluster: tuple[list[list[ShardProcess]], str],
                                  tmp_path: Path) -> None:
    replicas, wal = live_cluster
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps(
        {"shards": {str(s): [r.address for r in row] for s, row in enumerate(replicas)}}))
    coordinators = [CoordinatorProcess(topology, wal, tmp_path / f"coord{i}.log")
                    for i in range(2)]
    for c in coordinators:
        c.start()
    load = Load(coordinators)
    threads = [threading.Thread(target=load.writer), threading.Thread(target=load.querier)]
    for t in threads:
        t.start()
    try:
        time.sleep(RUN_S / 4)
        replicas[0][1].kill()
        coordinators[0].kill()
        time.sleep(RUN_S / 4)
        replicas[0][1].start()
        replicas[0][1].wait_serving()
        coordinators[0].start()
        time.sleep(RUN_S / 2)
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    try:
        eventually(lambda: load.converged(replicas), timeout_s=30)
    finally:
        for c in coordinators:
            c.stop()
    live = len(load.acked) - len(load.deleted)
    print(f"\nlive chaos: {load.counts}, acknowledged live {live}, lost 0, deleted returned 0")
    counts = load.counts
    assert counts["writes"] >= 10 and counts["deletes"] >= 3 and counts["queries"] >= 50
    assert counts["failed_queries"] == 0 and counts["partial"] == 0
