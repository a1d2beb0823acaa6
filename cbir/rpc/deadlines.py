"""Deadline arithmetic: every outgoing call gets a timeout derived from the caller's."""

from __future__ import annotations

import grpc

from cbir.limits import DEFAULT_LIMITS, Limits


def remaining_s(context: grpc.aio.ServicerContext, limits: Limits = DEFAULT_LIMITS) -> float:
    """Seconds the caller still allows, capped; the default applies when the caller set none."""
    left = context.time_remaining()
    if left is None:
        return limits.default_deadline_s
    return max(0.0, min(float(left), limits.max_deadline_s))
