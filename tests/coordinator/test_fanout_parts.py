"""The three parts of the shard fan-out, each on its own: the call policy over a scripted
replica pool, the version view over a pool that only reports live sets, and the replica pool's
attempts, ejection and topology changes (real channels, no server behind them)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from coordinator.balancer import BALANCERS, ShardBalancer
from coordinator.call_policy import CallPolicy, ShardCallFailed
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.replica_pool import ReplicaPool
from coordinator.version_view import VersionView

Code = grpc.StatusCode
Script = Callable[[str], Awaitable[str]]
NO_CALL: Any = None  # the scripted pool answers by address; no stub function is called


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), code.name)


class ScriptedPool:
    """What CallPolicy needs of a pool: balancers, a deadline budget and single attempts,
    here answered by ``script(address)`` instead of a replica."""

    def __init__(self, addresses: tuple[str, ...], script: Script,
                 config: CoordinatorConfig) -> None:
        self.config = config
        self.metrics = CoordinatorMetrics()
        balancer: ShardBalancer = BALANCERS["round-robin"](0, config.balancer, random.Random(1))
        balancer.set_addresses(addresses)
        self.balancers = {0: balancer}
        self.script = script
        self.attempts: list[str] = []

    def attempt_budget_s(self, deadline: float) -> float:
        return deadline - time.monotonic()

    async def attempt(self, shard: int, address: str, fn: Any, deadline: float) -> str:
        self.attempts.append(address)
        return await self.script(address)


def policy_over(script: Script, hedge_after_ms: float | None = None
                ) -> tuple[CallPolicy, ScriptedPool]:
    config = CoordinatorConfig(num_shards=1, hedge_after_ms=hedge_after_ms,
                               adaptive_hedge=False,
                               balancer=BalancerConfig(probe_stale_after_s=0))
    pool = ScriptedPool(("a", "b"), script, config)
    return CallPolicy(pool, config), pool  # type: ignore[arg-type]


def test_a_retryable_failure_is_retried_on_the_other_replica() -> None:
    async def script(address: str) -> str:
        if address == "a":
            raise rpc_error(Code.UNAVAILABLE)
        return f"answer from {address}"

    async def main() -> None:
        policy, pool = policy_over(script)
        for _ in range(2):  # whichever replica round-robin starts with
            assert await policy.call(0, NO_CALL, time.monotonic() + 5) == "answer from b"
        assert pool.attempts.count("a") >= 1

    asyncio.run(main())


def test_a_request_error_is_not_retried() -> None:
    async def script(address: str) -> str:
        raise rpc_error(Code.INVALID_ARGUMENT)

    async def main() -> None:
        policy, pool = policy_over(script)
        with pytest.raises(ShardCallFailed) as info:
            await policy.call(0, NO_CALL, time.monotonic() + 5)
        assert info.value.code == Code.INVALID_ARGUMENT and len(pool.attempts) == 1

    asyncio.run(main())


def test_a_slow_call_is_hedged_and_the_deadline_bounds_everything() -> None:
    async def slow_a(address: str) -> str:
        await asyncio.sleep(5 if address == "a" else 0.01)
        return address

    async def main() -> None:
        policy, pool = policy_over(slow_a, hedge_after_ms=50)
        answers = {await policy.call(0, NO_CALL, time.monotonic() + 3) for _ in range(2)}
        assert answers == {"b"} and pool.attempts.count("b") == 2
        assert pool.metrics.hedges.labels("0")._value.get() >= 1

        async def never(address: str) -> str:
            await asyncio.sleep(10)
            return address

        policy, _ = policy_over(never)
        start = time.monotonic()
        with pytest.raises(ShardCallFailed) as info:
            await policy.call(0, NO_CALL, time.monotonic() + 0.2)
        assert info.value.code == Code.DEADLINE_EXCEEDED and time.monotonic() - start < 2

    asyncio.run(main())


class LivePool:
    """What VersionView needs of a pool: live sets and their generations."""

    def __init__(self, live: dict[int, list[str]]) -> None:
        self.live = live
        self.generation = 0
        self.config = CoordinatorConfig(num_shards=len(live))
        self.replicas: dict[tuple[int, str], Any] = {}

    def live_addresses(self) -> dict[int, list[str]]:
        return self.live

    def generations(self) -> tuple[int, ...]:
        return (self.generation,)


def test_version_view_pins_the_newest_complete_version_and_follows_changes() -> None:
    pool = LivePool({0: ["a0", "b0"], 1: ["a1"]})
    view = VersionView(pool)  # type: ignore[arg-type]
    assert view.pinned_version() is None
    view.versions.report(0, "a0", ["v2", "v1"])
    view.versions.report(0, "b0", ["v1"])
    view.versions.report(1, "a1", ["v1"])
    assert view.pinned_version() == "v1"  # v2 is not complete: shard 1 lacks it
    assert view.holders(0, "v1") == {"a0", "b0"} and view.holders(0, "v2") == {"a0"}
    view.versions.report(1, "a1", ["v2", "v1"])
    assert view.pinned_version() == "v2"
    pool.live = {0: ["b0"], 1: ["a1"]}  # a0 ejected: v2 no longer complete
    pool.generation += 1
    assert view.pinned_version() == "v1"
    view.forget(0, "b0")
    assert view.pinned_version() is None


def test_replica_pool_attempts_eject_and_topology_changes() -> None:
    async def main() -> None:
        config = CoordinatorConfig(num_shards=1, balancer=BalancerConfig(eject_after_failures=2))
        pool = ReplicaPool(config, CoordinatorMetrics(), random.Random(0))
        assert pool.update_topology({0: ("127.0.0.1:1", "127.0.0.1:2")}) == []
        assert pool.live_counts() == {0: 2}

        async def down(stub: Any, timeout: float) -> str:
            assert 0 < timeout <= 5
            raise rpc_error(Code.UNAVAILABLE)

        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await pool.attempt(0, "127.0.0.1:1", down, time.monotonic() + 5)
        assert pool.live_addresses() == {0: ["127.0.0.1:2"]}  # ejected after 2 failures

        async def ok(stub: Any, timeout: float) -> str:
            return "ok"

        assert await pool.attempt(0, "127.0.0.1:2", ok, time.monotonic() + 5) == "ok"
        removed = pool.update_topology({0: ("127.0.0.1:2",)})
        assert removed == [(0, "127.0.0.1:1")]
        with pytest.raises(grpc.aio.AioRpcError, match="was removed"):
            await pool.attempt(0, "127.0.0.1:1", ok, time.monotonic() + 5)
        await pool.close()

    asyncio.run(main())
