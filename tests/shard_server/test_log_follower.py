"""Replicas following one shard log converge: pushed and polled entries apply once, in order,
and a replica that starts late (a restart) reaches the same view as its peer."""

from __future__ import annotations

import asyncio

import numpy as np

from cbir.wal import Delete, ShardLog, Upsert
from shard_server.log_follower import LogFollower
from shard_server.segments import LiveView

DIM = 4


class Replica:
    def __init__(self, shard_log: ShardLog) -> None:
        self.view = LiveView.of_base(np.arange(10, dtype=np.int64), DIM)
        self.published = 0
        self.follower = LogFollower(shard_log, lambda: self.view, self._publish)

    def _publish(self, view: LiveView) -> None:
        self.view = view
        self.published += 1


def _write(shard_log: ShardLog, i: int) -> int:
    vec = np.eye(DIM, dtype=np.float32)[i % DIM]
    ops = [Upsert(100 + i, f"s3://b/{i}", vec)] + ([Delete(i)] if i < 10 else [])
    return shard_log.append(ops, "v")


def test_push_and_poll_converge(tmp_path: object) -> None:
    async def scenario() -> tuple[Replica, Replica]:
        writer = ShardLog(str(tmp_path), 0)
        a, b = Replica(ShardLog(str(tmp_path), 0)), Replica(ShardLog(str(tmp_path), 0))
        for i in range(15):
            seq = _write(writer, i)
            await asyncio.gather(a.follower.offer(seq), a.follower.offer(seq))  # a is pushed to
        stop = asyncio.Event()
        poller = asyncio.create_task(b.follower.run(0.01, stop))  # b only polls
        while b.view.applied_seq < 15:
            await asyncio.sleep(0.01)
        stop.set()
        await poller
        return a, b

    a, b = asyncio.run(scenario())
    for replica in (a, b):
        assert replica.view.applied_seq == 15
        assert replica.view.count == 10 - 10 + 15
        assert sorted(replica.view.delta.live_ids().tolist()) == list(range(100, 115))
    np.testing.assert_array_equal(a.view.tombstones, b.view.tombstones)


def test_late_replica_catches_up_in_bounded_rounds(tmp_path: object) -> None:
    writer = ShardLog(str(tmp_path), 0)
    for i in range(25):
        _write(writer, i)
    late = Replica(ShardLog(str(tmp_path), 0))
    late.follower.max_entries = 10
    positions = [asyncio.run(late.follower.catch_up()) for _ in range(3)]
    assert positions == [10, 20, 25]
    assert asyncio.run(late.follower.catch_up()) == 25 and late.published == 3
