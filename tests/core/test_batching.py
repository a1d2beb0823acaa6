"""The generic bounded micro-batcher (cbir.batching) on its own: batching while busy, groups,
weights, the bound, withdrawal, errors, close."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cbir.batching import BatcherLimits, MicroBatcher, QueueFull
from cbir.errors import ResourceExhausted, Unavailable


class Recorder:
    """A batch function that records its batches and waits on a gate, so tests can hold a slot."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = 0

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_what_queues_while_busy_leaves_together() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate.clear()
        b: MicroBatcher[int, int] = MicroBatcher(run, BatcherLimits(max_batch=3), name="t")
        futures = [b.submit(i) for i in range(5)]
        await asyncio.sleep(0)
        run.gate.set()
        assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
        assert run.batches == [[0], [1, 2, 3], [4]]  # one in flight; then max_batch of 3
        await b.close()

    asyncio.run(main())


def test_groups_by_key_and_weights() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate.clear()
        b: MicroBatcher[int, int] = MicroBatcher(
            run, BatcherLimits(max_batch=4), name="t", key=lambda i: i % 2,
            weight=lambda i: 2 if i >= 10 else 1)
        futures = [b.submit(i) for i in (1, 2, 4, 3, 10, 12, 6)]
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(*futures)
        # [1] left at once (its group then emptied); the even group, opened before the odd one
        # by 2, goes first: 2, 4, 10 weigh 4 (the max), then the rest of it, then 3.
        assert run.batches == [[1], [2, 4, 10], [12, 6], [3]]
        await b.close()

    asyncio.run(main())


def test_a_full_queue_raises_resource_exhausted() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate.clear()
        b: MicroBatcher[int, int] = MicroBatcher(run, BatcherLimits(max_queued=2), name="the q")
        first = b.submit(0)  # in flight, not queued
        await asyncio.sleep(0)
        queued = [b.submit(1), b.submit(2)]
        with pytest.raises(QueueFull, match="the q is overloaded: 2 requests already queued"):
            b.submit(3)
        assert issubclass(QueueFull, ResourceExhausted)
        run.gate.set()
        assert await asyncio.gather(first, *queued) == [0, 10, 20]
        assert await b.run(3) == 30  # room again
        await b.close()

    asyncio.run(main())


def test_item_errors_fail_only_their_item_and_batch_errors_fail_all() -> None:
    async def main() -> None:
        run = Recorder()
        b: MicroBatcher[int, int] = MicroBatcher(run, BatcherLimits(), name="t")
        with pytest.raises(ValueError, match="bad -1"):
            await b.run(-1)

        async def broken(items: list[int]) -> list[int]:
            raise RuntimeError("boom")

        c: MicroBatcher[int, int] = MicroBatcher(broken, BatcherLimits(), name="t")
        results = await asyncio.gather(c.run(1), c.run(2), return_exceptions=True)
        assert [str(r) for r in results] == ["boom", "boom"]
        await b.close()
        await c.close()

    asyncio.run(main())


def test_abandoned_batches_are_withdrawn_only_when_allowed() -> None:
    async def main() -> None:
        for withdraw in (True, False):
            run = Recorder()
            run.gate.clear()
            b: MicroBatcher[int, int] = MicroBatcher(run, BatcherLimits(), name="t",
                                                      withdraw_abandoned=withdraw)
            caller = asyncio.ensure_future(b.run(1))
            await asyncio.sleep(0.01)
            caller.cancel()
            await asyncio.sleep(0.01)
            assert run.cancelled == (1 if withdraw else 0)
            assert b.in_flight == (0 if withdraw else 1)
            run.gate.set()
            await b.close()

    asyncio.run(main())


def test_withdrawn_items_are_skipped_and_close_fails_the_waiting() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate.clear()
        b: MicroBatcher[int, int] = MicroBatcher(run, BatcherLimits(), name="t")
        b.submit(0)
        await asyncio.sleep(0)
        gone, kept = b.submit(1), b.submit(2)
        gone.cancel()
        run.gate.set()
        assert await kept == 20
        assert run.batches == [[0], [2]]
        run.gate.clear()
        b.submit(3)
        await asyncio.sleep(0)
        waiting = b.submit(4)
        await b.close()
        with pytest.raises(Unavailable, match="t: cancelled"):
            await waiting
        assert b.queued == 0

    asyncio.run(main())


def test_window_collects_more_items() -> None:
    async def main() -> None:
        run = Recorder()
        b: MicroBatcher[int, int] = MicroBatcher(
            run, BatcherLimits(window_s=0.05), name="t")
        first = b.submit(0)
        await asyncio.sleep(0.01)
        second = b.submit(1)
        assert await asyncio.gather(first, second) == [0, 10]
        assert run.batches == [[0, 1]]
        await b.close()

    asyncio.run(main())
