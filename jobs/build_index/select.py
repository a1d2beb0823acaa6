"""Automatic index selection: a pure function of (vectors, dim, shards, memory budget).

The rule, cheapest-to-serve exact first, then the fastest approximate index that fits the
memory budget of one shard server (documented in docs/build_index.md):

1. ``Flat`` (exact) while a shard holds at most ``FLAT_MAX_PER_SHARD`` vectors: a brute-force
   scan of 50k x 1280-d floats is ~250 MB of memory bandwidth, a few ms with BLAS, and exact
   results need no tuning.
2. ``HNSW32`` when the full vectors plus the graph (~2 x 32 int32 links per vector on level 0)
   fit: the best recall/latency trade-off on CPU when memory allows.
3. ``IVF{k},Flat`` (full vectors, no graph), then ``IVF{k},SQ8`` (1 byte per dimension), then
   ``IVF{k},PQ{m}`` (m bytes per vector, m the largest divisor of dim <= 64 that fits) - the
   first that fits. OPQ (a learned rotation before PQ) improves PQ recall but its training is
   slow (minutes even for 20k x 50-d on 2 cores), so it is opt-in: ``--index OPQ32,IVF4096,PQ32``.

``k`` (inverted lists) is the power of two nearest ``4 * sqrt(n)`` for a shard of ``n`` vectors,
bounded so every list gets >= 39 training points. Every estimate also counts what the server holds
beside the index: the id -> key table and, for IVF, the id -> list hash map used by GetVectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cbir.errors import InvalidArgument, ResourceExhausted

FLAT_MAX_PER_SHARD = 50_000
HNSW_M = 32
KEY_BYTES = 64  # average "s3://bucket/key" string held by the server, per vector
ID_BYTES = 8
IVF_DIRECT_MAP_BYTES = 32  # hash map id -> (list, offset), built at load for GetVectors
MAX_PQ_M = 64
MIN_POINTS_PER_CENTROID = 39  # Faiss warns below this
GIB = 1024**3


@dataclass(frozen=True)
class IndexChoice:
    factory: str  # the user-level factory, e.g. "Flat", "HNSW32", "IVF1024,SQ8"
    estimated_bytes: int  # per shard, index + id/key table
    reason: str


def per_shard_count(count: int, num_shards: int) -> int:
    return math.ceil(count / num_shards) if count else 0


def nlist_for(n: int) -> int:
    """Inverted lists for a shard of ``n`` vectors: pow2 near 4*sqrt(n), >= 39 points each."""
    if n <= 0:
        return 1
    target = 4 * math.sqrt(n)
    pow2 = 2 ** max(0, round(math.log2(target)))
    cap = max(1, n // MIN_POINTS_PER_CENTROID)
    while pow2 > cap:
        pow2 //= 2
    return max(1, pow2)


def pq_m_candidates(dim: int) -> list[int]:
    """Sub-quantiser counts (divisors of dim, Faiss requires it), largest first."""
    return [m for m in range(min(dim, MAX_PQ_M), 0, -1) if dim % m == 0]


def estimate_bytes(factory: str, n: int, dim: int) -> int:
    """What one shard server holds for ``n`` vectors of ``factory`` (a user-level factory:
    ``Flat``, ``HNSW32``, ``IVFk,Flat|SQ8|PQm``, ``OPQm,IVFk,PQm``): the index, the id -> key
    table and, for IVF, the id hash map (docs/build_index.md checks these against RSS)."""
    parts = factory.split(",")
    total = n * (ID_BYTES + KEY_BYTES)
    if parts[0].startswith("OPQ"):
        total += dim * dim * 4  # the learned rotation
        parts = parts[1:]
    coarse, codes = parts[0], parts[-1]
    if coarse.startswith("IVF"):
        total += int(coarse[3:]) * dim * 4 + n * IVF_DIRECT_MAP_BYTES
    elif coarse.startswith("HNSW"):
        total += n * int(2 * int(coarse[4:]) * 4 * 1.1)
    if codes == "SQ8":
        return total + n * dim + 2 * dim * 4
    if codes.startswith("PQ"):
        m = int(codes[2:])
        return total + n * m + m * 256 * (dim // m) * 4
    return total + n * 4 * dim  # Flat (also IVF,Flat and HNSW's stored vectors)


def _estimates(n: int, dim: int) -> list[tuple[str, int]]:
    nlist = nlist_for(n)
    factories = ["HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},SQ8",
                 *(f"IVF{nlist},PQ{m}" for m in pq_m_candidates(dim))]
    return [(f, estimate_bytes(f, n, dim)) for f in factories]


def candidates(count: int, dim: int, num_shards: int,
               memory_budget_bytes: int) -> list[IndexChoice]:
    """Every factory that fits the budget, in preference order (the first is the choice; the
    rest are what a build falls back to when a shard misses the recall target)."""
    if dim <= 0 or num_shards <= 0 or count < 0:
        raise InvalidArgument(f"bad sizes: count={count} dim={dim} shards={num_shards}")
    n = per_shard_count(count, num_shards)
    flat = estimate_bytes("Flat", n, dim)
    if n <= FLAT_MAX_PER_SHARD and flat <= memory_budget_bytes:
        return [IndexChoice("Flat", flat, f"{n} vectors/shard <= {FLAT_MAX_PER_SHARD}: exact")]
    budget = memory_budget_bytes / GIB
    fits = [IndexChoice(factory, size, f"{n} vectors/shard; ~{size / GIB:.2f} GiB fits "
                                       f"{budget:.2f} GiB")
            for factory, size in _estimates(n, dim) if size <= memory_budget_bytes]
    if not fits:
        raise ResourceExhausted(
            f"{n} vectors of dim {dim} per shard do not fit {budget:.2f} GiB even "
            f"with PQ: use more shards or a larger --memory-budget-gb"
        )
    return fits


def choose_index(count: int, dim: int, num_shards: int, memory_budget_bytes: int) -> IndexChoice:
    """The factory for ``count`` vectors of ``dim`` split over ``num_shards`` shards."""
    return candidates(count, dim, num_shards, memory_budget_bytes)[0]


def faiss_factory(factory: str) -> str:
    """The factory string given to Faiss: indexes without native ids (Flat, HNSW, ...) are
    wrapped in IDMap2 so they store global image ids and can reconstruct by id."""
    if "IVF" in factory or factory.startswith("IDMap"):
        return factory
    return f"IDMap2,{factory}"


def is_exact(factory: str) -> bool:
    """Exact (brute-force) indexes need no training and no tuning: recall is 1 by definition."""
    return factory.removeprefix("IDMap2,").removeprefix("IDMap,") == "Flat"
