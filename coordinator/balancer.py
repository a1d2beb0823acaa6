"""Replica choice for one shard: power-of-two-choices on in-flight requests and latency EWMA,
ejection after consecutive failures, re-admission after a successful probe. Pure: no grpc, no
asyncio; the clock and the random source are injected so tests are deterministic."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from coordinator.config import BalancerConfig

STALE_WEIGHT = 0.05  # ~3 decay times


@dataclass
class ReplicaState:
    address: str
    in_flight: int = 0
    ewma_s: float | None = None
    last_sample: float = 0.0
    consecutive_failures: int = 0
    ejected: bool = False
    last_probe: float = 0.0
    ejections: int = 0


class ShardBalancer:
    def __init__(
        self,
        shard: int,
        config: BalancerConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard = shard
        self.config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self.replicas: dict[str, ReplicaState] = {}

    # ------------------------------------------------------------- membership

    def set_addresses(self, addresses: Iterable[str]) -> tuple[list[str], list[str]]:
        """Adopt a new replica set; returns (added, removed). Known replicas keep their state."""
        wanted = list(dict.fromkeys(addresses))
        removed = [a for a in self.replicas if a not in wanted]
        added = [a for a in wanted if a not in self.replicas]
        for address in removed:
            del self.replicas[address]
        for address in added:
            # New replicas start in rotation: a headless Service lists only ready pods.
            self.replicas[address] = ReplicaState(address)
        return added, removed

    def live(self) -> list[ReplicaState]:
        return [r for r in self.replicas.values() if not r.ejected]

    # ------------------------------------------------------------- choice

    def _cost(self, replica: ReplicaState, default_latency: float, now: float) -> float:
        weight = 0.0
        if replica.ewma_s is not None:
            weight = math.exp(-(now - replica.last_sample) / self.config.ewma_decay_s)
        if replica.ewma_s is None or weight < STALE_WEIGHT:
            latency = default_latency
        else:
            # Old samples fade towards the default, so a replica that is never picked because
            # it once looked slow gets picked (and re-measured) again; past STALE_WEIGHT it is
            # treated as unmeasured, i.e. exactly as fast as the fastest.
            latency = weight * replica.ewma_s + (1 - weight) * default_latency
        return (replica.in_flight + 1) * latency

    def pick(self, exclude: Iterable[str] = ()) -> str | None:
        """Two random live candidates, the cheaper wins; None when no live replica is left."""
        skip = set(exclude)
        candidates = [r for r in self.live() if r.address not in skip]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0].address
        now = self._clock()
        known = [r.ewma_s for r in candidates if r.ewma_s is not None]
        # Unmeasured replicas look as fast as the fastest measured one, so they get tried.
        default_latency = min(known) if known else 1.0
        a, b = self._rng.sample(candidates, 2)
        cost_a, cost_b = self._cost(a, default_latency, now), self._cost(b, default_latency, now)
        if cost_a == cost_b:
            return a.address if a.in_flight <= b.in_flight else b.address
        return a.address if cost_a < cost_b else b.address

    # ------------------------------------------------------------- outcomes

    def begin(self, address: str) -> None:
        replica = self.replicas.get(address)
        if replica is not None:
            replica.in_flight += 1

    def end(self, address: str) -> None:
        replica = self.replicas.get(address)
        if replica is not None:
            replica.in_flight = max(0, replica.in_flight - 1)

    def succeeded(self, address: str, latency_s: float) -> None:
        replica = self.replicas.get(address)
        if replica is None:
            return
        alpha = self.config.ewma_alpha
        replica.ewma_s = (
            latency_s if replica.ewma_s is None
            else alpha * latency_s + (1 - alpha) * replica.ewma_s
        )
        replica.last_sample = self._clock()
        replica.consecutive_failures = 0

    def failed(self, address: str) -> bool:
        """Count a connection-level failure; True when it ejected the replica just now."""
        replica = self.replicas.get(address)
        if replica is None or replica.ejected:
            return False
        replica.consecutive_failures += 1
        if replica.consecutive_failures < self.config.eject_after_failures:
            return False
        replica.ejected = True
        replica.ejections += 1
        replica.last_probe = self._clock()
        return True

    # ------------------------------------------------------------- probing

    def due_for_probe(self) -> list[str]:
        """Ejected replicas whose last probe is at least one re-probe interval old."""
        now = self._clock()
        due = [
            r for r in self.replicas.values()
            if r.ejected and now - r.last_probe >= self.config.reprobe_interval_s
        ]
        for replica in due:
            replica.last_probe = now
        return [r.address for r in due]

    def restore(self, address: str) -> None:
        replica = self.replicas.get(address)
        if replica is not None and replica.ejected:
            replica.ejected = False
            replica.consecutive_failures = 0
            replica.ewma_s = None  # its old latency says nothing about the restarted process
