"""Cross-query micro-batching of shard calls.

Concurrent pinned vector queries with the same (k, search params, index version) share ONE
``ShardSearchRequest`` per shard (the Shard API takes n vectors and answers n x k), so the
coordinator makes one shard RPC per batch instead of one per query. No window is waited for:
a query goes out at once when one of the shard's call slots is free; what queues while every
slot is busy leaves together in the next call. Low load therefore sees batches of one.

Per-query semantics are those of an unbatched call: the batch is one logical shard call (the
balancer picks its replica; it is retried on another replica and hedged as a whole), each
query keeps its own deadline (a query whose deadline passes while its batch is in flight
leaves without this shard: partial, DEADLINE_EXCEEDED), and a failed batch fails the shard
for each of its queries. The batch's own deadline is the latest of its queries'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc
import numpy as np

from coordinator.fanout import Fanout, ShardCallFailed
from protos import cbir_pb2, cbir_pb2_grpc

log = logging.getLogger(__name__)

Row = tuple[cbir_pb2.ShardSearchResponse, int]  # the batch's reply, this query's row in it
GroupKey = tuple[int, bytes, str]  # k, serialized SearchParams, pinned index version


@dataclass
class _Member:
    vector: np.ndarray
    deadline: float
    request_id: str
    future: asyncio.Future[Row]


def _expire(future: asyncio.Future[Row], shard: int) -> None:
    if not future.done():
        future.set_exception(ShardCallFailed(shard, "deadline exceeded (batched call)",
                                             grpc.StatusCode.DEADLINE_EXCEEDED))


class ShardBatcher:
    """The batching queue of one shard."""

    def __init__(self, fanout: Fanout, shard: int, retry_codes: frozenset[grpc.StatusCode]
                 ) -> None:
        self.fanout = fanout
        self.shard = shard
        self.retry_codes = retry_codes
        self._queues: dict[GroupKey, list[_Member]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _slots(self) -> int:
        per_replica = self.fanout.config.batch_in_flight_per_replica
        return max(1, per_replica * len(self.fanout.balancers[self.shard].live()))

    def submit(self, vector: np.ndarray, k: int, params: cbir_pb2.SearchParams,
               version: str, deadline: float, request_id: str) -> asyncio.Future[Row]:
        """Queue one query; the future settles with its row of a (maybe shared) shard call, or
        ShardCallFailed (also when its own deadline passes first). A future, not a task: no
        task per query and shard. Cancel it to withdraw the query."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Row] = loop.create_future()
        key = (k, params.SerializeToString(), version)
        self._queues.setdefault(key, []).append(_Member(vector, deadline, request_id, future))
        timer = loop.call_later(max(self.fanout.attempt_budget_s(deadline), 0.0), _expire, future,
                                self.shard)
        future.add_done_callback(lambda _: timer.cancel())
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        slots = self._slots()
        max_batch = max(1, self.fanout.config.max_batch)
        while self._queues and self._in_flight < slots:
            key = next(iter(self._queues))  # the oldest group first
            queue = self._queues[key]
            members, rest = queue[:max_batch], queue[max_batch:]
            if rest:
                self._queues[key] = rest
            else:
                del self._queues[key]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(key, members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, key: GroupKey, members: list[_Member]) -> None:
        try:
            members = [m for m in members if not m.future.done()]  # expired or cancelled
            if members:
                await self._call(key, members)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _call(self, key: GroupKey, members: list[_Member]) -> None:
        k, params, version = key
        vectors = np.stack([m.vector for m in members]).astype("<f4", copy=False)
        # A batch carries its first query's id; the coordinator logs which ids went together.
        request = cbir_pb2.ShardSearchRequest(
            vectors=vectors.tobytes(), dim=int(vectors.shape[1]), k=k,
            params=cbir_pb2.SearchParams.FromString(params), index_version=version,
            request_id=members[0].request_id,
        )
        if len(members) > 1 and log.isEnabledFor(logging.DEBUG):
            log.debug("shard %d batch %s carries %s", self.shard, members[0].request_id,
                      [m.request_id for m in members])
        self.fanout.metrics.batch_size.observe(len(members))

        def call(stub: cbir_pb2_grpc.ShardStub, timeout: float
                 ) -> Awaitable[cbir_pb2.ShardSearchResponse]:
            return stub.Search(request, timeout=timeout)

        deadline = max(m.deadline for m in members)
        prefer = self.fanout.holders(self.shard, version)
        sent = asyncio.ensure_future(
            self.fanout.call(self.shard, call, deadline, self.retry_codes, prefer))

        def withdraw(_: object) -> None:
            # Every query of the batch has left (cancelled callers): stop the call, or it would
            # hold this call slot until the latest deadline while other queries queue.
            if not sent.done() and all(m.future.done() for m in members):
                sent.cancel()

        for member in members:
            member.future.add_done_callback(withdraw)
        try:
            reply = await sent
        except asyncio.CancelledError:
            _settle(members, ShardCallFailed(self.shard, "batched call cancelled"))
            current = asyncio.current_task()
            if sent.cancelled() and not (current is not None and current.cancelling()):
                return  # withdrawn above, not this task cancelled
            raise
        except ShardCallFailed as exc:
            _settle(members, exc)
            return
        except Exception as exc:  # never leave a query waiting on a future nobody settles
            _settle(members, exc)
            raise
        if reply.num_queries != len(members):
            _settle(members, ShardCallFailed(
                self.shard, f"answered {reply.num_queries} rows to {len(members)} queries"))
            return
        for row, member in enumerate(members):
            if not member.future.done():
                member.future.set_result((reply, row))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _settle(members: list[_Member], exc: BaseException) -> None:
    for member in members:
        if not member.future.done():
            member.future.set_exception(exc)
