"""One logical call to a shard: which replicas to try, retrying a retryable failure on another
replica, hedging a slow call with a second one, and shadow calls that keep stale latency
estimates fresh. Single attempts are the replica pool's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from coordinator.config import CoordinatorConfig
from coordinator.replica_pool import ReplicaPool, ShardCall

T = TypeVar("T")
Code = grpc.StatusCode
# Worth another replica: the replica (not the request) was the problem.
RETRYABLE = frozenset(
    {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.ABORTED,
     Code.CANCELLED}
)


class ShardCallFailed(Exception):
    """Every attempt on a shard failed (or none could be made) within the deadline."""

    def __init__(self, shard: int, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason
        self.code = code


class CallPolicy:
    def __init__(self, pool: ReplicaPool, config: CoordinatorConfig) -> None:
        self.pool = pool
        self.config = config
        self.metrics = pool.metrics
        hedge = config.hedge_after_ms
        self.hedge_s = hedge / 1000.0 if hedge is not None and hedge > 0 else None
        self._shadows: set[asyncio.Task[Any]] = set()

    def hedge_delay_s(self, shard: int) -> float | None:
        """Fixed --hedge-after-ms, else the shard's recent latency quantile (adaptive)."""
        if self.hedge_s is not None or not self.config.adaptive_hedge:
            return self.hedge_s
        quantile = self.pool.balancers[shard].latency_quantile()
        if quantile is None:
            return None
        return max(quantile, self.config.hedge_min_ms / 1000.0)

    async def call(
        self,
        shard: int,
        fn: ShardCall[T],
        deadline: float,
        retry_codes: frozenset[grpc.StatusCode] = RETRYABLE,
        prefer: set[str] | None = None,
    ) -> T:
        """One logical call to ``shard``: retried on other replicas, maybe hedged. Replicas in
        ``prefer`` (e.g. those holding a pinned index version) are tried first."""
        attempt: _Attempts[T] = _Attempts(self, shard, fn, deadline, prefer)
        try:
            return await attempt.run(retry_codes)
        finally:
            attempt.cancel_pending()
            self._maybe_shadow(shard, fn, deadline, attempt.tried, prefer)

    def _maybe_shadow(self, shard: int, fn: ShardCall[T], deadline: float, tried: set[str],
                      prefer: set[str] | None) -> None:
        """Send a copy of this call to a replica whose latency estimate is stale; nobody waits
        for it, its latency (or failure) just updates the balancer."""
        address = self.pool.balancers[shard].shadow_candidate(exclude=tried, among=prefer)
        if address is None or self.pool.attempt_budget_s(deadline) <= 0:
            return
        task = asyncio.ensure_future(self.pool.attempt(shard, address, fn, deadline))
        self._shadows.add(task)
        task.add_done_callback(_forget_shadow(self._shadows))
        self.metrics.latency_probes.labels(str(shard)).inc()

    def close(self) -> None:
        for task in list(self._shadows):
            task.cancel()


def _forget_shadow(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed shadow call is already counted

    return done


class _Attempts(Generic[T]):
    """The attempts of one logical call: at most one in flight, plus one hedge."""

    def __init__(self, policy: CallPolicy, shard: int, fn: ShardCall[T], deadline: float,
                 prefer: set[str] | None = None) -> None:
        self.policy = policy
        self.pool = policy.pool
        self.prefer = prefer
        self.shard = shard
        self.fn = fn
        self.deadline = deadline
        self.tried: set[str] = set()
        self.pending: dict[asyncio.Task[T], str] = {}
        self.hedged = False
        self.last_reason = "no live replica"
        self.last_code: grpc.StatusCode | None = None

    def failed(self) -> ShardCallFailed:
        return ShardCallFailed(self.shard, self.last_reason, self.last_code)

    def launch(self) -> bool:
        if self.pool.attempt_budget_s(self.deadline) <= 0:
            self.last_reason = f"deadline exceeded ({self.last_reason})"
            self.last_code = Code.DEADLINE_EXCEEDED
            return False
        balancer = self.pool.balancers[self.shard]
        address = None
        if self.prefer is not None:
            others = set(balancer.replicas) - self.prefer
            address = balancer.pick(exclude=self.tried | others)
        if address is None:
            address = balancer.pick(exclude=self.tried)
        if address is None:
            return False
        self.tried.add(address)
        coro = self.pool.attempt(self.shard, address, self.fn, self.deadline)
        self.pending[asyncio.ensure_future(coro)] = address
        return True

    async def run(self, retry_codes: frozenset[grpc.StatusCode]) -> T:
        hedge_s = self.policy.hedge_delay_s(self.shard)
        if not self.launch():
            raise self.failed()
        while self.pending:
            hedge_now = hedge_s is not None and not self.hedged and len(self.pending) == 1
            done = await self._wait(hedge_s if hedge_now else None)
            if not done:
                if hedge_now and self._hedge():
                    continue
                self.last_reason, self.last_code = "deadline exceeded", Code.DEADLINE_EXCEEDED
                break
            answered, result = self._collect(done, retry_codes)
            if answered:
                return result  # type: ignore[return-value]
            if not self.pending and self.launch():
                self.policy.metrics.retries.labels(str(self.shard)).inc()
        raise self.failed()

    async def _wait(self, hedge_s: float | None) -> set[asyncio.Task[T]]:
        """The attempts done before the deadline (or before it is time to hedge)."""
        wait_s = max(self.pool.attempt_budget_s(self.deadline), 0.0)
        done, _ = await asyncio.wait(
            self.pending, timeout=min(wait_s, hedge_s) if hedge_s else wait_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        return done

    def _hedge(self) -> bool:
        """Launch the one hedge; False when no time is left for it."""
        if self.pool.attempt_budget_s(self.deadline) <= 0:
            return False
        self.hedged = True
        if self.launch():
            self.policy.metrics.hedges.labels(str(self.shard)).inc()
        return True

    def _collect(self, done: set[asyncio.Task[T]], retry_codes: frozenset[grpc.StatusCode]
                 ) -> tuple[bool, T | None]:
        """(True, result) for the first success; else record why each attempt failed and raise
        ShardCallFailed for a failure another replica would not fix."""
        for task in done:
            address = self.pending.pop(task)
            exc = task.exception()
            if exc is None:
                return True, task.result()
            if not isinstance(exc, grpc.aio.AioRpcError):
                raise exc
            self.last_code = exc.code()
            self.last_reason = f"{address}: {exc.code().name}: {exc.details()}"
            if exc.code() not in retry_codes:
                raise self.failed()
            if exc.code() == Code.FAILED_PRECONDITION:
                self.policy.metrics.version_retries.labels(str(self.shard)).inc()
        return False, None

    def cancel_pending(self) -> None:
        for task in self.pending:
            task.cancel()
