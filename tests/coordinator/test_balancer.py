from __future__ import annotations

import random

from coordinator.balancer import RoundRobinBalancer, ShardBalancer
from coordinator.config import BalancerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def balancer(n: int = 2, eject_after: int = 3, clock: Clock | None = None) -> ShardBalancer:
    b = ShardBalancer(0, BalancerConfig(eject_after_failures=eject_after, reprobe_interval_s=1.0),
                      random.Random(1), clock or Clock())
    b.set_addresses([f"r{i}" for i in range(n)])
    return b


def test_p2c_prefers_the_less_loaded_replica() -> None:
    b = balancer(2)
    for _ in range(5):
        b.begin("r0")
    assert all(b.pick() == "r1" for _ in range(50))


def test_p2c_prefers_the_faster_replica() -> None:
    b = balancer(2)
    b.succeeded("r0", 0.200)
    b.succeeded("r1", 0.010)
    assert all(b.pick() == "r1" for _ in range(50))


def test_a_slow_replica_stays_avoided_and_gets_shadow_probes_when_stale() -> None:
    clock = Clock()
    b = balancer(2, clock=clock)
    b.succeeded("r0", 0.050)  # slow
    b.succeeded("r1", 0.002)
    assert b.shadow_candidate() is None  # both estimates fresh
    clock.now += 30.0
    b.succeeded("r1", 0.002)
    # No fading: real queries keep going to the fast one...
    assert all(b.pick() == "r1" for _ in range(50))
    # ...and the stale one is re-measured by a shadow copy, at most once per stale period.
    assert b.shadow_candidate(exclude=["r1"]) == "r0"
    assert b.shadow_candidate(exclude=["r1"]) is None
    assert b.shadow_candidate(among={"r1"}) is None
    for _ in range(20):  # probes say it recovered: it is picked again
        b.succeeded("r0", 0.001)
    assert "r0" in {b.pick() for _ in range(50)}


def test_latency_quantile_for_adaptive_hedging() -> None:
    b = balancer(2)
    assert b.latency_quantile() is None
    for i in range(100):
        b.succeeded("r0", 0.001 * (i + 1), quantile=0.95)
    q = b.latency_quantile()
    assert q is not None and 0.090 <= q <= 0.097


def test_round_robin_cycles_over_live_replicas() -> None:
    b = RoundRobinBalancer(0, BalancerConfig(), random.Random(1), Clock())
    b.set_addresses(["r0", "r1", "r2"])
    b.succeeded("r0", 1.0)
    picks = [str(b.pick()) for _ in range(6)]
    assert sorted(picks) == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert b.pick(exclude=["r0", "r1"]) == "r2"


def test_p2c_spreads_load_over_equal_replicas() -> None:
    b = balancer(4)
    picks = [b.pick() for _ in range(400)]
    assert {p: picks.count(p) for p in set(picks)}.keys() == {"r0", "r1", "r2", "r3"}


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    b = balancer(2, eject_after=3)
    assert not b.failed("r0") and not b.failed("r0")
    b.succeeded("r0", 0.01)
    assert not b.failed("r0") and not b.failed("r0")
    assert b.failed("r0")  # third in a row
    assert [r.address for r in b.live()] == ["r1"]
    assert all(b.pick() == "r1" for _ in range(20))
    assert b.pick(exclude={"r1"}) is None


def test_ejected_replica_is_probed_once_per_interval_and_restored() -> None:
    clock = Clock()
    b = balancer(2, eject_after=1, clock=clock)
    assert b.failed("r0")
    assert b.due_for_probe() == []  # not yet: ejected just now
    clock.now += 1.0
    assert b.due_for_probe() == ["r0"]
    assert b.due_for_probe() == []  # already probed in this interval
    b.restore("r0")
    assert {r.address for r in b.live()} == {"r0", "r1"}
    assert b.replicas["r0"].ejections == 1


def test_membership_changes_keep_known_state() -> None:
    b = balancer(2)
    b.succeeded("r0", 0.05)
    added, removed = b.set_addresses(["r0", "r2"])
    assert (added, removed) == (["r2"], ["r1"])
    assert b.replicas["r0"].ewma_s == 0.05
    b.end("r1")  # a call that ends after its replica left is harmless
    assert b.failed("gone") is False


def test_no_replica_means_no_pick() -> None:
    b = balancer(0)
    assert b.pick() is None
