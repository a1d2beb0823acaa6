"""Cross-query micro-batching of shard calls (on the generic ``cbir.batching.MicroBatcher``).

Concurrent pinned vector queries with the same (k, search params, index version) share ONE
``ShardSearchRequest`` per shard (the Shard API takes n vectors and answers n x k), so the
coordinator makes one shard RPC per batch instead of one per query. No window is waited for:
a query goes out at once when one of the shard's call slots is free; what queues while every
slot is busy leaves together in the next call. Low load therefore sees batches of one.

Per-query semantics are those of an unbatched call: the batch is one logical shard call (the
balancer picks its replica; it is retried on another replica and hedged as a whole), each
query keeps its own deadline (a query whose deadline passes while its batch is in flight
leaves without this shard: partial, DEADLINE_EXCEEDED), and a failed batch fails the shard
for each of its queries. The batch's own deadline is the latest of its queries'. The queue is
bounded: a full one fails the shard for that query with RESOURCE_EXHAUSTED (partial).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc
import numpy as np

from cbir.batching import BatcherLimits, MicroBatcher, QueueFull
from coordinator.fanout import Fanout, ShardCallFailed
from protos import cbir_pb2, cbir_pb2_grpc

log = logging.getLogger(__name__)

Row = tuple[cbir_pb2.ShardSearchResponse, int]  # the batch's reply, this query's row in it
GroupKey = tuple[int, bytes, str]  # k, serialized SearchParams, pinned index version


@dataclass(frozen=True)
class ShardQuery:
    vector: np.ndarray
    key: GroupKey
    deadline: float
    request_id: str


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
        self.batcher: MicroBatcher[ShardQuery, Row] = MicroBatcher(
            self._call,
            BatcherLimits(max_batch=max(1, fanout.config.max_batch),
                          max_queued=fanout.config.shard_max_queued),
            name=f"shard {shard} call queue", slots=self._slots, key=lambda q: q.key,
            withdraw_abandoned=True,
            cancelled_error=lambda: ShardCallFailed(shard, "batched call cancelled"),
        )

    def _slots(self) -> int:
        per_replica = self.fanout.config.batch_in_flight_per_replica
        return max(1, per_replica * len(self.fanout.balancers[self.shard].live()))

    def submit(self, vector: np.ndarray, k: int, params: cbir_pb2.SearchParams,
               version: str, deadline: float, request_id: str) -> asyncio.Future[Row]:
        """Queue one query; the future settles with its row of a (maybe shared) shard call, or
        ShardCallFailed (also when its own deadline passes first, or the queue is full). A
        future, not a task: no task per query and shard. Cancel it to withdraw the query."""
        loop = asyncio.get_running_loop()
        query = ShardQuery(vector, (k, params.SerializeToString(), version), deadline,
                           request_id)
        try:
            future = self.batcher.submit(query)
        except QueueFull as exc:
            failed: asyncio.Future[Row] = loop.create_future()
            failed.set_exception(ShardCallFailed(self.shard, str(exc),
                                                 grpc.StatusCode.RESOURCE_EXHAUSTED))
            return failed
        timer = loop.call_later(max(self.fanout.attempt_budget_s(deadline), 0.0), _expire,
                                future, self.shard)
        future.add_done_callback(lambda _: timer.cancel())
        return future

    async def _call(self, queries: list[ShardQuery]) -> list[Row]:
        k, params, version = queries[0].key
        vectors = np.stack([q.vector for q in queries]).astype("<f4", copy=False)
        # A batch carries its first query's id; the coordinator logs which ids went together.
        request = cbir_pb2.ShardSearchRequest(
            vectors=vectors.tobytes(), dim=int(vectors.shape[1]), k=k,
            params=cbir_pb2.SearchParams.FromString(params), index_version=version,
            request_id=queries[0].request_id,
        )
        if len(queries) > 1 and log.isEnabledFor(logging.DEBUG):
            log.debug("shard %d batch %s carries %s", self.shard, queries[0].request_id,
                      [q.request_id for q in queries])
        self.fanout.metrics.batch_size.observe(len(queries))

        def call(stub: cbir_pb2_grpc.ShardStub, timeout: float
                 ) -> Awaitable[cbir_pb2.ShardSearchResponse]:
            return stub.Search(request, timeout=timeout)

        deadline = max(q.deadline for q in queries)
        prefer = self.fanout.holders(self.shard, version)
        reply = await self.fanout.call(self.shard, call, deadline, self.retry_codes, prefer)
        if reply.num_queries != len(queries):
            raise ShardCallFailed(
                self.shard, f"answered {reply.num_queries} rows to {len(queries)} queries")
        return [(reply, row) for row in range(len(queries))]

    async def close(self) -> None:
        await self.batcher.close()
