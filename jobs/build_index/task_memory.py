"""A shard task's working memory kept to about one chunk (docs/build_index.md, "The memory
model, checked"). Three process-wide settings, scoped to the task where they can be:

- glibc's mmap threshold fixed at 128 KiB. glibc otherwise raises it to the largest block freed
  (up to 32 MiB), after which every chunk-sized temporary (numpy copies, Faiss's residuals and
  codes) comes from the heap and stays in RSS once freed: measured, a 200k-vector PQ task
  peaked 40% higher. It stays set (glibc has no way to restore its dynamic threshold).
- ``trim``: free heap pages back to the OS between phases (the index's lists once it is written).
- Faiss's brute-force kernels (coarse assignment, exact ground truth) multiply blocks of (query
  rows x 1024) floats: 16 MiB at Faiss's default of 4096 rows, 1 MiB at 256 (restored after).

Arrow's allocator is chosen in ``jobs/__init__.py`` (it must be, before pyarrow loads).
On a platform without glibc the first two are no-ops.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import faiss

_M_MMAP_THRESHOLD = -3  # mallopt's parameter; a fixed value also ends the dynamic raise
_MMAP_THRESHOLD_BYTES = 128 << 10
_BLAS_QUERY_ROWS = 256


@lru_cache(maxsize=1)
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim() -> None:
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


@contextmanager
def bounded() -> Iterator[None]:
    if (libc := _glibc()) is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    previous = faiss.cvar.distance_compute_blas_query_bs
    faiss.cvar.distance_compute_blas_query_bs = _BLAS_QUERY_ROWS
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs = previous
