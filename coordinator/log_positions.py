"""The newest write-ahead log position this coordinator knows, per shard (no grpc).

The result cache keys an answer by the log position each shard's answer was computed at
(``cbir.cache.AnswerKey.log_positions``); a lookup uses the positions known here, so a write
known to this coordinator changes the key and the next lookup misses. Positions are learned
from three sources, and only ever move forward (learning never expires an entry, it only
changes the key later lookups use):

- this coordinator's own acknowledged writes (the seq of each log entry it created), before
  the write is acknowledged, so a caller's next search never sees a cached answer from before
  its own write;
- what replicas report: ``ShardSearchResponse.applied_seq`` of every answer and
  ``Stats.applied_seq`` of the version poll;
- the log itself: several coordinators write the same log (the HPA runs several), so a
  background tail lists each shard's log after the last known position every
  ``--wal-tail-interval`` s (one LIST per shard that names only newer entries). A write made
  through another coordinator changes this coordinator's keys at the latest one tail interval
  after it is durable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable

from cbir.wal import ShardLog

log = logging.getLogger(__name__)


class LogPositions:
    """Per shard, the highest log sequence number known to exist (0: none / no log)."""

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self._lock = threading.Lock()  # learn() may run on the loop and in threads
        # The tuple lookups read, rebuilt only when a position moves (a cache hit reads one
        # attribute, not a per-shard loop).
        self.known: tuple[int, ...] = (0,) * num_shards

    def learn(self, shard: int, seq: int) -> None:
        """``seq`` exists in ``shard``'s log (a write acknowledged, applied or listed)."""
        if 0 <= shard < self.num_shards and seq > self.known[shard]:
            with self._lock:
                if seq > self.known[shard]:
                    known = list(self.known)
                    known[shard] = seq
                    self.known = tuple(known)

    def learn_all(self, positions: Iterable[int]) -> None:
        """One position per shard, in shard order (e.g. an answer's reported positions)."""
        for shard, seq in enumerate(positions):
            if seq > self.known[shard]:
                self.learn(shard, seq)


class LogTail:
    """Lists each shard's log after its last known position (the writes of other
    coordinators); cheap: a LIST that starts after that entry's name."""

    def __init__(self, wal_root: str, positions: LogPositions) -> None:
        self.positions = positions
        self.logs = [ShardLog(wal_root, s) for s in range(positions.num_shards)]

    async def poll(self) -> None:
        await asyncio.gather(*(self._poll_one(shard_log) for shard_log in self.logs))

    async def _poll_one(self, shard_log: ShardLog) -> None:
        known = self.positions.known[shard_log.shard]
        try:
            last = await asyncio.to_thread(shard_log.last_seq, known)
        except Exception as exc:  # the store briefly away: keys stay as they are, not wrong
            log.warning("tailing the log of shard %d failed: %s", shard_log.shard, exc)
            return
        self.positions.learn(shard_log.shard, last)
