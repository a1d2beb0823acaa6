"""Replica choice for one shard: power-of-two-choices on in-flight requests and latency EWMA,
ejection after consecutive failures, re-admission after a successful probe, shadow latency
probes of replicas whose estimate went stale, and the shard's recent latency quantile (for
adaptive hedging). Pure: no grpc, no asyncio; the clock and the random source are injected so
tests are deterministic."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from coordinator.config import BalancerConfig

LATENCY_WINDOW = 256  # recent successful calls of a shard, for its latency quantile
QUANTILE_EVERY = 32  # recompute the quantile every this many samples
MIN_QUANTILE_SAMPLES = 32


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
    last_shadow: float = float("-inf")


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
        # Bumped whenever the live set changes, so callers can cache what depends on it.
        self.generation = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._since_quantile = 0
        self._quantile_s: float | None = None

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
        if added or removed:
            self.generation += 1
        return added, removed

    def live(self) -> list[ReplicaState]:
        return [r for r in self.replicas.values() if not r.ejected]

    # ------------------------------------------------------------- choice

    @staticmethod
    def _cost(replica: ReplicaState, default_latency: float) -> float:
        # Unmeasured replicas cost as much as the fastest measured one. Estimates do not fade:
        # a slow replica stays slow in the books until a (shadow) sample says otherwise.
        latency = default_latency if replica.ewma_s is None else replica.ewma_s
        return (replica.in_flight + 1) * latency

    def pick(self, exclude: Iterable[str] = ()) -> str | None:
        """Two random live candidates, the cheaper wins; None when no live replica is left."""
        skip = set(exclude)
        candidates = [r for r in self.live() if r.address not in skip]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0].address
        known = [r.ewma_s for r in candidates if r.ewma_s is not None]
        # Unmeasured replicas look as fast as the fastest measured one, so they get tried.
        default_latency = min(known) if known else 1.0
        a, b = self._rng.sample(candidates, 2)
        cost_a, cost_b = self._cost(a, default_latency), self._cost(b, default_latency)
        if cost_a == cost_b:
            return a.address if a.in_flight <= b.in_flight else b.address
        return a.address if cost_a < cost_b else b.address

    def shadow_candidate(self, exclude: Iterable[str] = (),
                         among: set[str] | None = None) -> str | None:
        """A live, measured replica whose newest latency sample is stale and that is idle: it
        gets a copy of the current call whose answer nobody waits for, so a slow replica is
        re-measured without real queries paying for it. At most one per stale period each."""
        stale_s = self.config.probe_stale_after_s
        if stale_s <= 0 or len(self.replicas) < 2:
            return None
        now = self._clock()
        skip = set(exclude)
        for r in self.replicas.values():
            if (r.ejected or r.ewma_s is None or r.in_flight or r.address in skip
                    or (among is not None and r.address not in among)):
                continue
            if now - r.last_sample >= stale_s and now - r.last_shadow >= stale_s:
                r.last_shadow = now
                return r.address
        return None

    def latency_quantile(self) -> float | None:
        """The shard's recent latency at ``hedge_quantile`` (None until enough samples)."""
        return self._quantile_s

    def _record_latency(self, latency_s: float, quantile: float) -> None:
        self._latencies.append(latency_s)
        self._since_quantile += 1
        if self._since_quantile >= QUANTILE_EVERY and len(self._latencies) >= MIN_QUANTILE_SAMPLES:
            self._since_quantile = 0
            ordered = sorted(self._latencies)
            self._quantile_s = ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    # ------------------------------------------------------------- outcomes

    def begin(self, address: str) -> None:
        replica = self.replicas.get(address)
        if replica is not None:
            replica.in_flight += 1

    def end(self, address: str) -> None:
        replica = self.replicas.get(address)
        if replica is not None:
            replica.in_flight = max(0, replica.in_flight - 1)

    def succeeded(self, address: str, latency_s: float, quantile: float = 0.95) -> None:
        replica = self.replicas.get(address)
        if replica is None:
            return
        self._record_latency(latency_s, quantile)
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
        self.generation += 1
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
            self.generation += 1
            replica.consecutive_failures = 0
            replica.ewma_s = None  # its old latency says nothing about the restarted process


class RoundRobinBalancer(ShardBalancer):
    """Same membership, ejection and probing; the choice is a plain cycle over the live
    replicas (``--balancer round-robin``: a baseline for benchmarks, no latency awareness)."""

    def __init__(self, shard: int, config: BalancerConfig, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(shard, config, rng, clock)
        self._turn = 0

    def pick(self, exclude: Iterable[str] = ()) -> str | None:
        skip = set(exclude)
        candidates = sorted(r.address for r in self.live() if r.address not in skip)
        if not candidates:
            return None
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    def shadow_candidate(self, exclude: Iterable[str] = (),
                         among: set[str] | None = None) -> str | None:
        return None  # every replica gets its share anyway


BALANCERS: dict[str, type[ShardBalancer]] = {"p2c": ShardBalancer,
                                             "round-robin": RoundRobinBalancer}
