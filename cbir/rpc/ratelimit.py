"""Per-peer back-off after failed authentications, and refusal logging that cannot flood.

An attacker guessing bearer tokens, or a client stuck with a wrong one, must neither get
unlimited tries nor turn each try into a log line (500 wrong tokens in half a second were 900
warning lines). Two small pieces, both driven by the server interceptor on the event loop:

- ``FailureLimiter``: a fixed window per peer address; after ``max_failures`` failures in one
  ``interval_s`` the peer is refused outright until the window ends, a *right* token included
  (otherwise the block would not slow a guesser down at all).
- ``RefusalLog``: the first refusal of an interval is logged at once, the rest are counted and
  summarised in one line per interval (by reason and peer), so the log stays readable and the
  count stays exact.

Hand-written rather than a rate-limit library: the state is one small dict read on the event
loop thread, and what matters here (bounded memory, the summary line) is policy, not counting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_PEERS = 10_000  # bounded memory whatever the number of addresses seen


@dataclass(frozen=True)
class FailureLimit:
    """``max_failures`` failed authentications per peer per ``interval_s`` (0 = no limit)."""

    max_failures: int = 20
    interval_s: float = 10.0


DEFAULT_FAILURE_LIMIT = FailureLimit()


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.7:53412`` -> ``10.0.0.7``; ``ipv6:[::1]:5000`` -> ``[::1]``: the port
    changes with every connection, the address is what a limit is about."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer  # unix sockets and the like: the whole string


class FailureLimiter:
    def __init__(self, limit: FailureLimit = DEFAULT_FAILURE_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock  # swappable: tests move time on
        self._windows: dict[str, tuple[float, int]] = {}  # peer -> (window start, failures)
        self._blocked_until = 0.0  # latest end of any block: a cheap "nobody is blocked" test

    @property
    def enabled(self) -> bool:
        return self.limit.max_failures > 0

    def any_blocked(self) -> bool:
        return self.enabled and self.clock() < self._blocked_until

    def blocked_for(self, peer: str) -> float:
        """Seconds until ``peer`` may try again (0 = not blocked)."""
        if not self.enabled:
            return 0.0
        start, failures = self._windows.get(peer_address(peer), (0.0, 0))
        left = start + self.limit.interval_s - self.clock()
        return left if failures >= self.limit.max_failures and left > 0 else 0.0

    def failed(self, peer: str) -> None:
        if not self.enabled:
            return
        now, address = self.clock(), peer_address(peer)
        start, failures = self._windows.get(address, (now, 0))
        if now - start >= self.limit.interval_s:
            start, failures = now, 0
        self._windows[address] = (start, failures + 1)
        if failures + 1 >= self.limit.max_failures:
            self._blocked_until = max(self._blocked_until, start + self.limit.interval_s)
        if len(self._windows) > MAX_TRACKED_PEERS:
            self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        interval = self.limit.interval_s
        self._windows = {p: w for p, w in self._windows.items() if now - w[0] < interval}
        while len(self._windows) > MAX_TRACKED_PEERS:  # all fresh: drop the oldest windows
            self._windows.pop(next(iter(self._windows)))


class RefusalLog:
    """One warning for the first refusal of an interval, then one summary line per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._quiet_until = float("-inf")
        self._pending: Counter[tuple[str, str]] = Counter()  # (reason, peer address) -> count
        self._flush_scheduled = False

    def refused(self, method: str, reason: str, peer: str) -> None:
        now = self.clock()
        address = peer_address(peer)
        if now >= self._quiet_until and not self._pending:
            self._quiet_until = now + self.interval_s
            self.logger.warning("refused %s from %s: %s (further refusals are summarised "
                                "every %.0f s)", method, address, reason, self.interval_s)
            return
        self._pending[(reason, address)] += 1
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit use): summarise on the next call instead
            if self.clock() >= self._quiet_until:
                self.flush()
            return
        self._flush_scheduled = True
        loop.call_later(max(self._quiet_until - self.clock(), 0.0), self.flush)

    def flush(self) -> None:
        """Log the counted refusals as one line (a no-op when there are none)."""
        self._flush_scheduled = False
        if not self._pending:
            return
        total = sum(self._pending.values())
        parts = ", ".join(f"{n} x {reason} from {address}"
                          for (reason, address), n in self._pending.most_common(5))
        more = len(self._pending) - 5
        self.logger.warning("refused %d more calls in the last %.0f s: %s%s", total,
                            self.interval_s, parts, f" (+{more} more kinds)" if more > 0 else "")
        self._pending.clear()
        self._quiet_until = self.clock() + self.interval_s
