"""Deadline arithmetic: every outgoing call gets a timeout derived from the caller's.

Pure (no grpc): the servicer reads ``context.time_remaining()`` and hands the number in, so the
proto-free query service and future HTTP handlers share the same rule.
"""

from __future__ import annotations

from cbir.limits import DEFAULT_LIMITS, Limits


def caller_budget_s(time_remaining: float | None, limits: Limits = DEFAULT_LIMITS) -> float:
    """Seconds the caller still allows, capped; the default applies when the caller set none."""
    if time_remaining is None:
        return limits.default_deadline_s
    return max(0.0, min(float(time_remaining), limits.max_deadline_s))
