"""One bounded asyncio micro-batcher (no grpc): callers submit items, a batch function runs
many at once. Used three times: the coordinator's per-shard call batching, its query-image
embedding, and the shard server's Faiss searches.

- Items are grouped by ``key`` (only items with equal keys can share a batch, e.g. the same k
  and index version); the oldest group leaves first.
- At most ``slots()`` batches are in flight. No window is waited for unless ``window_s`` > 0: a
  batch leaves as soon as a slot is free, so low load sees batches of one and what queues while
  every slot is busy leaves together.
- BOUNDED: at most ``max_queued`` items wait for a slot; one more raises ``QueueFull`` (a
  ``cbir.errors.ResourceExhausted``: RESOURCE_EXHAUSTED at the gRPC boundary) instead of
  letting memory grow with the backlog.
- A caller that goes away cancels its future; a batch whose every caller has gone is cancelled
  too when ``withdraw_abandoned`` (only safe when the batch function can be interrupted: not a
  worker thread that must finish before the next starts).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cbir.errors import ResourceExhausted, Unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")
# The results in item order; an exception in the list fails that item only.
BatchFn = Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]]


class QueueFull(ResourceExhausted):
    """A batcher's queue is at its bound; the caller should back off and retry."""


@dataclass(frozen=True)
class BatcherLimits:
    max_batch: int = 64  # total weight of one batch (items, or e.g. query rows)
    max_queued: int = 1024  # items waiting for a slot
    window_s: float = 0.0  # extra wait for more items before a batch leaves


@dataclass
class _Entry(Generic[Item, Result]):
    item: Item
    weight: int
    future: asyncio.Future[Result] = field(repr=False)


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: BatchFn[Item, Result],
        limits: BatcherLimits,
        *,
        name: str,
        slots: Callable[[], int] = lambda: 1,
        key: Callable[[Item], Hashable] = lambda _: None,
        weight: Callable[[Item], int] = lambda _: 1,
        withdraw_abandoned: bool = False,
        cancelled_error: Callable[[], BaseException] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.limits = limits
        self.name = name
        self._slots = slots
        self._key = key
        self._weight = weight
        self._withdraw = withdraw_abandoned
        self._cancelled_error = cancelled_error or (lambda: Unavailable(f"{name}: cancelled"))
        self._groups: dict[Hashable, deque[_Entry[Item, Result]]] = {}
        self.queued = 0
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item``; its future settles with its result or exception. Cancel the future
        to withdraw the item. Raises QueueFull when ``max_queued`` items already wait."""
        if self._closed:
            raise self._cancelled_error()
        if self.queued >= self.limits.max_queued:
            raise QueueFull(f"{self.name} is overloaded: {self.queued} requests already "
                            f"queued (the limit); retry later")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        group = self._groups.setdefault(self._key(item), deque())
        group.append(_Entry(item, max(1, self._weight(item)), future))
        self.queued += 1
        self._dispatch()
        return future

    async def run(self, item: Item) -> Result:
        """Submit and wait; a cancelled caller withdraws its item."""
        future = self.submit(item)
        try:
            return await future
        finally:
            future.cancel()

    def _dispatch(self) -> None:
        while not self._closed and self._groups and self.in_flight < max(1, self._slots()):
            batch = self._take()
            if not batch:
                continue
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, batch: list[_Entry[Item, Result]] | None = None
              ) -> list[_Entry[Item, Result]]:
        """Up to max_batch weight from the oldest group (or ``batch``'s own group)."""
        batch = [] if batch is None else batch
        key = self._key(batch[0].item) if batch else next(iter(self._groups))
        group = self._groups.get(key)
        total = sum(e.weight for e in batch)
        while group and (not batch or total + group[0].weight <= self.limits.max_batch):
            entry = group.popleft()
            self.queued -= 1
            if not entry.future.done():  # a withdrawn caller leaves no work behind
                batch.append(entry)
                total += entry.weight
        if group is not None and not group:
            del self._groups[key]
        return batch

    async def _send(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            if self.limits.window_s > 0 and sum(e.weight for e in batch) < self.limits.max_batch:
                await asyncio.sleep(self.limits.window_s)
                batch = self._take(batch)  # what arrived meanwhile in the same group
            live = [e for e in batch if not e.future.done()]
            if live:
                await self._call(live)
        finally:
            self.in_flight -= 1
            self._dispatch()

    async def _call(self, batch: list[_Entry[Item, Result]]) -> None:
        sent = asyncio.ensure_future(self._run_batch([e.item for e in batch]))
        if self._withdraw:
            _withdraw_when_abandoned(batch, sent)
        try:
            results = await sent
        except asyncio.CancelledError:
            _settle(batch, self._cancelled_error())
            if not sent.cancelled() or _cancelling():
                raise  # this task was cancelled (close), not the batch withdrawn
            return
        except Exception as exc:  # every caller of the batch gets it
            _settle(batch, exc)
            return
        self._deliver(batch, results)

    def _deliver(self, batch: list[_Entry[Item, Result]],
                 results: Sequence[Result | BaseException]) -> None:
        if len(results) != len(batch):
            _settle(batch, RuntimeError(
                f"{self.name}: {len(results)} results for {len(batch)} items"))
            return
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    async def close(self) -> None:
        self._closed = True  # nothing new leaves: the batches cancelled below free slots
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for group in self._groups.values():
            _settle(list(group), self._cancelled_error())
        self._groups.clear()
        self.queued = 0


def _withdraw_when_abandoned(batch: Sequence[_Entry[Item, Result]],
                             sent: asyncio.Future[Sequence[Result | BaseException]]) -> None:
    def withdraw(_: object) -> None:
        if not sent.done() and all(e.future.done() for e in batch):
            sent.cancel()  # nobody waits: free the slot for the queries that do

    for entry in batch:
        entry.future.add_done_callback(withdraw)


def _cancelling() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _settle(batch: Sequence[_Entry[Item, Result]], exc: BaseException) -> None:
    for entry in batch:
        if not entry.future.done():
            entry.future.set_exception(exc)
        if not entry.future.cancelled():
            entry.future.exception()  # retrieved: no "never retrieved" noise for a gone caller
