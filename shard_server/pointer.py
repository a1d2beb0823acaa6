"""The "current index version" pointer: a small object (S3 or local file) whose content is the
URI of the index version root to serve, e.g. ``s3://b/indexes/CURRENT`` -> ``s3://b/indexes/v2``.

Flipping it is one atomic write (a single PUT on S3, temp + rename locally), so a watcher reads
either the old or the new URI, never a torn one. Shard servers started with ``--index-pointer``
poll it and run the same load-check-swap as the ``LoadIndex`` RPC when it changes
(``cbir.index_pointer`` reads and writes it; this module decides when to reload).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cbir.index_pointer import MAX_POINTER_BYTES, read_pointer, write_pointer

# Reading and flipping the pointer live in the core (the compaction job flips it too).
__all__ = ["MAX_POINTER_BYTES", "PointerWatch", "read_pointer", "write_pointer"]


@dataclass
class PointerWatch:
    """Decides when a pointer value is worth (re)loading. Pure: the caller reads and loads.

    A value that failed to load is not retried every poll (a corrupt index would be downloaded
    and refused over and over), only after ``retry_failed_s``, or at once when the pointer
    moves on."""

    retry_failed_s: float = 60.0
    serving_target: str | None = None
    failed_target: str | None = None
    failed_at: float = float("-inf")

    def wants(self, target: str, now: float | None = None) -> bool:
        if target == self.serving_target:
            return False
        if target == self.failed_target:
            elapsed = (time.monotonic() if now is None else now) - self.failed_at
            return elapsed >= self.retry_failed_s
        return True

    def loaded(self, target: str) -> None:
        self.serving_target, self.failed_target = target, None

    def failed(self, target: str, now: float | None = None) -> None:
        self.failed_target = target
        self.failed_at = time.monotonic() if now is None else now
