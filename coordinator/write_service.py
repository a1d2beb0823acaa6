"""The live index's write service (no grpc): Upsert / Delete -> the shards' write-ahead logs ->
a push to every live replica of each written shard.

``coordinator.writes.WriteRouter`` does the durable part (one log entry per shard, an item is
"ok" only once its entry exists). Then each shard's live replicas are told "entry N exists"
(``Shard.ApplyLog``), all at once and bounded by ``push_timeout_s``: the push only makes the
write visible sooner (replicas also poll the log), so a replica that misses it is not an error
of the write. The answer waits for the pushes so that a caller's next search normally sees its
own write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import numpy as np

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from cbir.limits import Limits
from coordinator.fanout import Fanout
from coordinator.log_positions import LogPositions
from coordinator.query_embedder import check_image_bytes
from coordinator.service import CoordinatorState
from coordinator.writes import (
    OK,
    FetchedObject,
    ItemResult,
    UpsertItem,
    WriteRouter,
    WriteTarget,
)
from protos import cbir_pb2

log = logging.getLogger(__name__)


class WriteService:
    def __init__(self, wal_root: str, num_shards: int, state: CoordinatorState, fanout: Fanout,
                 limits: Limits, push_timeout_s: float = 0.5,
                 positions: LogPositions | None = None) -> None:
        self.wal_root = wal_root
        self.num_shards = num_shards
        self.state = state
        self.fanout = fanout
        self.limits = limits
        self.push_timeout_s = push_timeout_s
        self._router: WriteRouter | None = None
        self.positions = positions  # the result cache's keys learn each durable entry

    def router(self) -> WriteRouter:
        """The router for what the shards serve (rebuilt if their dim / model changes)."""
        if not self.wal_root:
            raise FailedPrecondition("this coordinator has no write-ahead log (--wal): "
                                     "writes are off")
        info = self.state.require_info()
        if len(info.model_versions) != 1:
            raise FailedPrecondition(
                f"shards serve several model versions {sorted(info.model_versions)}: writes "
                "wait until one is served")
        target = WriteTarget(self.wal_root, self.num_shards, info.dim,
                             next(iter(info.model_versions)), info.metadata_columns)
        if self._router is None or self._router.target != target:
            self._router = WriteRouter(target, self._embed, self._fetch)
        return self._router

    async def upsert(self, items: Sequence[UpsertItem]) -> list[ItemResult]:
        self._check_batch(len(items))
        results = await self.router().upsert(items)
        await self.push(results)
        return results

    async def delete(self, keys: Sequence[str], image_ids: Sequence[int]) -> list[ItemResult]:
        self._check_batch(len(keys) + len(image_ids))
        results = await self.router().delete(keys, image_ids)
        await self.push(results)
        return results

    def _check_batch(self, n: int) -> None:
        if n == 0:
            raise InvalidArgument("the request has no items")
        if n > self.limits.max_batch:
            raise ResourceExhausted(f"{n} items > max batch {self.limits.max_batch}")

    async def _embed(self, image: bytes) -> np.ndarray:
        check_image_bytes(image, self.limits)
        runner = self.state.require_embedder(self.state.require_info())
        return await runner.embed(image)

    async def _fetch(self, key: str) -> FetchedObject:
        prefix = await asyncio.to_thread(storage.read_prefix, key, self.limits.max_image_bytes)
        if len(prefix.data) > self.limits.max_image_bytes:
            raise ResourceExhausted(f"{key}: object exceeds {self.limits.max_image_bytes} bytes")
        return FetchedObject(prefix.data, prefix.content_type, prefix.last_modified,
                             prefix.user_metadata)

    async def push(self, results: Sequence[ItemResult]) -> None:
        """Tell every live replica of each written shard to catch up (best effort, bounded)."""
        newest: dict[int, int] = {}
        for r in results:
            if r.status == OK:
                newest[r.shard] = max(newest.get(r.shard, 0), r.seq)
        if self.positions is not None:  # before the ack: the caller's next search misses
            for shard, seq in newest.items():
                self.positions.learn(shard, seq)
        live = self.fanout.live_addresses()
        deadline = time.monotonic() + self.push_timeout_s
        calls = [self._push_one(shard, address, seq, deadline)
                 for shard, seq in newest.items() for address in live.get(shard, [])]
        await asyncio.gather(*calls)

    async def _push_one(self, shard: int, address: str, seq: int, deadline: float) -> None:
        # The stub directly, not the balancer's attempt: a slow push must not count against a
        # replica's search latency or eject it.
        replica = self.fanout.replicas.get((shard, address))
        if replica is None:
            return
        try:
            await replica.stub.ApplyLog(cbir_pb2.ApplyLogRequest(seq=seq),
                                        timeout=max(deadline - time.monotonic(), 0.001))
        except Exception as exc:  # the replica reads the log itself: late, not lost
            log.info("push of shard %d entry %d to %s failed: %s", shard, seq, address, exc)
