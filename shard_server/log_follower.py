"""A replica follows its shard's write-ahead log: entries after the applied position are read in
order, applied to the live view and published with one reference swap.

Entries arrive two ways: pushed by the coordinator right after they are durable (``offer``:
fast visibility) and read from the log by polling (``catch_up``: a replica that missed a push or
restarted reaches the same state). Both go through ``catch_up``, which reads from the log itself,
so a pushed entry is never applied out of order or twice; concurrent callers are serialised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cbir.wal import ShardLog
from shard_server.segments import LiveView

log = logging.getLogger(__name__)


class LogFollower:
    def __init__(
        self, shard_log: ShardLog, current: Callable[[], LiveView],
        publish: Callable[[LiveView], None], max_entries_per_round: int = 1024,
    ) -> None:
        self.log = shard_log
        self.current = current
        self.publish = publish
        self.max_entries = max_entries_per_round
        self._lock = asyncio.Lock()

    async def offer(self, seq: int) -> int:
        """A writer says entry ``seq`` exists: catch up to at least it (no-op if applied)."""
        if self.current().applied_seq >= seq:
            return self.current().applied_seq
        return await self.catch_up()

    async def catch_up(self) -> int:
        """Apply every entry past the applied position; returns the new position."""
        async with self._lock:
            view = self.current()
            new_view = await asyncio.to_thread(self._read_and_apply, view)
            if new_view is not view:
                self.publish(new_view)
            return new_view.applied_seq

    async def catch_up_fully(self) -> int:
        """Catch up until a round applies nothing (a round applies a bounded number)."""
        before, now = -1, self.current().applied_seq
        while now != before:
            before, now = now, await self.catch_up()
        return now

    def _read_and_apply(self, view: LiveView) -> LiveView:
        applied = 0
        for entry in self.log.read_after(view.applied_seq):
            view = view.apply(entry)
            applied += 1
            if applied >= self.max_entries:
                break
        if applied:
            log.info("shard %d applied %d log entries, now at %d", self.log.shard, applied,
                     view.applied_seq)
        return view

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Poll the log until ``stop`` is set (errors are logged and retried next round)."""
        while not stop.is_set():
            try:
                await self.catch_up()
            except Exception as exc:  # keep following: the store may be briefly unreachable
                log.warning("shard %d: reading the log failed: %s", self.log.shard, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
