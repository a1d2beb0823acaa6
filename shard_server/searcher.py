"""The shard's search core (no grpc): request validation, search, ids -> keys, GetVectors,
stats and index swaps.

Queries are expected L2-normalised (the coordinator embeds and normalises them; the score is
then the cosine similarity). Nothing is normalised here silently: a caller that sends raw
vectors gets inner products, which is what it asked for. Non-finite values are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np

from cbir.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from cbir.faiss_params import EF_SEARCH
from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.options import nested, option
from cbir.wal import ShardLog
from shard_server.batcher import BatchConfig, SearchBatcher
from shard_server.filtering import FilterConfig, FilterPlans, live_filtered_search
from shard_server.index_store import Expectations, IndexStore, LoadedIndex, load_shard
from shard_server.live import (
    delta_keys,
    limit_numpy_blas_threads,
    live_search,
    split_live_ids,
)
from shard_server.log_follower import LogFollower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # int64 (n, k), -1 = no result
    scores: np.ndarray  # float32 (n, k)
    keys: list[str]  # n * k, "" where id = -1
    index_version: str
    applied_seq: int = 0  # log position of the live state read (a lower bound, see search)


@dataclass(frozen=True)
class VectorsResult:
    ids: list[int]
    vectors: np.ndarray  # float32 (len(ids), dim)
    keys: list[str]
    missing: list[int]
    dim: int
    applied_seq: int = 0  # log position of the live state the vectors came from


@dataclass(frozen=True)
class SearcherConfig:
    shard: int = option(required=True, non_negative=True, help="which shard to serve")
    expect: Expectations = nested(Expectations)
    default_params: dict[str, int] = field(default_factory=dict)  # overrides the manifest's
    limits: Limits = DEFAULT_LIMITS
    batch: BatchConfig = nested(BatchConfig)
    filter: FilterConfig = nested(FilterConfig)
    threads: int = option(2, flag="--search-threads", positive=True,
                          help="threads running Faiss searches")
    # OpenMP threads per Faiss call (process-wide).
    faiss_threads: int = option(0, non_negative=True, metavar="N",
                                help="OpenMP threads per Faiss call (0 = Faiss's default, "
                                     "one per core)")
    # After a swap, the previous version keeps answering searches pinned to it this long, so a
    # coordinator can finish a roll across shards without partial answers. The served default
    # (the CLI's) is the one default: a config built in code behaves like the server.
    keep_previous_s: float = option(120.0, flag="--keep-previous-seconds", non_negative=True,
                                    metavar="S",
                                    help="after a swap, keep answering queries pinned to the "
                                         "previous version this long (0 = free it at once)")
    # The live index (docs/live_updates.md): "" = no live updates, the base index only.
    wal: str = option("", metavar="URI",
                      help="write-ahead log root (path or s3://) of live upserts/deletes to "
                           "apply on top of the index (default: none)")
    # Where index files are kept and memory-mapped (shared by the workers; "" = read into
    # this process's memory, files deleted after the load). --workers N > 1 sets one.
    index_cache_dir: str = option("", metavar="DIR",
                                  help="keep index files here and memory-map them (shared "
                                       "by --workers; default: read into memory)")
    wal_interval_s: float = option(1.0, flag="--wal-interval", positive=True, metavar="S",
                                   help="seconds between reads of the write-ahead log (pushes "
                                        "from coordinators make writes visible sooner)")


def decode_queries(data: bytes, dim: int, index_dim: int, limits: Limits) -> np.ndarray:
    """Packed float32 LE bytes -> (n, dim) array, every limit checked with a clear message."""
    if dim != index_dim:
        raise InvalidArgument(f"query dim {dim} != index dim {index_dim}")
    row_bytes = dim * 4
    if not data:
        raise InvalidArgument("no query vectors")
    if len(data) % row_bytes:
        raise InvalidArgument(
            f"vectors has {len(data)} bytes, not a multiple of dim*4 = {row_bytes}"
        )
    n = len(data) // row_bytes
    if n > limits.max_batch:
        raise ResourceExhausted(f"{n} query vectors > max batch {limits.max_batch}")
    queries = np.frombuffer(data, dtype="<f4").reshape(n, dim)
    if not np.isfinite(queries).all():
        raise InvalidArgument("query vectors contain NaN or infinity")
    return np.ascontiguousarray(queries, dtype=np.float32)


def check_k(k: int, limits: Limits) -> None:
    if k <= 0 or k > limits.max_k:
        raise InvalidArgument(f"k must be in 1..{limits.max_k}, got {k}")


def merge_params(defaults: dict[str, int], requested: dict[str, int],
                 limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """Per-request values win over defaults; 0 means "the default"; negatives are refused."""
    for name, value in requested.items():
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {value}")
    if requested.get(EF_SEARCH, 0) > limits.max_ef_search:
        raise InvalidArgument(f"ef_search must be <= {limits.max_ef_search}")
    out = dict(defaults)
    out.update({name: value for name, value in requested.items() if value > 0})
    return out


def run_search(
    loaded: LoadedIndex, queries: np.ndarray, k: int, params: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One Faiss call plus the live delta (thread-safe: parameters and the tombstone selector
    go per call, the index is never mutated)."""
    return live_search(loaded.index, loaded.live.get(), queries, k, params)


def reconstruct(loaded: LoadedIndex, image_ids: list[int]) -> np.ndarray:
    """Stored vectors by id (exact for Flat/HNSW/IVF-Flat, approximate for SQ/PQ codes)."""
    out = np.empty((len(image_ids), loaded.manifest.dim), dtype=np.float32)
    for row, image_id in enumerate(image_ids):
        out[row] = loaded.index.reconstruct(int(image_id))
    return out


class ShardSearcher:
    """Owns the serving index and the search executor; the servicer only translates."""

    def __init__(self, config: SearcherConfig) -> None:
        self.config = config
        self.store = IndexStore()
        self.queries_served = 0
        if config.faiss_threads > 0:
            faiss.omp_set_num_threads(config.faiss_threads)
        self._executor = ThreadPoolExecutor(config.threads, thread_name_prefix="cbir-faiss")
        self._batcher = SearchBatcher(run_search, self._executor, config.batch)
        self.filter_plans = FilterPlans(config.filter)
        self._load_lock = asyncio.Lock()
        self.log = ShardLog(config.wal, config.shard) if config.wal else None
        if self.log is not None:
            limit_numpy_blas_threads()

    def follower(self, loaded: LoadedIndex) -> LogFollower | None:
        """The log follower of ``loaded``'s live view (None without a log)."""
        box = loaded.live
        if self.log is not None and box.follower is None:
            box.follower = LogFollower(self.log, box.get, box.set)
        return box.follower

    async def apply_log(self, seq: int) -> int:
        """A coordinator pushed: catch the serving version up to at least ``seq``."""
        loaded = self.store.current()
        follower = self.follower(loaded)
        if follower is None:
            raise FailedPrecondition("this replica serves no write-ahead log (--wal)")
        if seq < 0:
            raise InvalidArgument(f"seq must be >= 0, got {seq}")
        return await follower.offer(seq)

    async def follow_log(self, stop: asyncio.Event) -> None:
        """Poll the log for the serving version until ``stop`` (a roll switches versions)."""
        while not stop.is_set():
            follower = self.follower(self.store.current()) if self.store.loaded else None
            if follower is not None:
                try:
                    await follower.catch_up()
                except Exception as exc:  # keep following: the store may be briefly away
                    log.warning("reading the write-ahead log failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.wal_interval_s)

    def defaults(self, loaded: LoadedIndex) -> dict[str, int]:
        return {**loaded.manifest.search_params, **self.config.default_params}

    async def search(self, data: bytes, dim: int, k: int, params: dict[str, int],
                     index_version: str = "", filter_text: str = "") -> SearchResult:
        loaded = self.store.get(index_version)
        # Read before the search: views only move forward, so the state searched is at least
        # this new. A lower bound is what a cache key may carry (never a newer claim).
        applied_seq = loaded.live.get().applied_seq
        check_k(k, self.config.limits)
        queries = decode_queries(data, dim, loaded.manifest.dim, self.config.limits)
        merged = merge_params(self.defaults(loaded), params, self.config.limits)
        if filter_text.strip():
            scores, ids = await self._filtered(loaded, filter_text, queries, k, merged)
        else:
            scores, ids = await self._batcher.search(loaded, queries, k, merged)
        self.queries_served += len(queries)
        keys = delta_keys(loaded.live.get(), ids, loaded.keys_of(ids))
        return SearchResult(ids, scores, keys, loaded.version, applied_seq)

    async def _filtered(self, loaded: LoadedIndex, text: str, queries: np.ndarray, k: int,
                        params: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """A filtered search runs on its own (not micro-batched: each call has its own
        selector); evaluating the filter is Arrow work, off the event loop too."""

        def run() -> tuple[np.ndarray, np.ndarray]:
            plan = self.filter_plans.plan(loaded, text)
            return live_filtered_search(loaded, plan, loaded.live.get(), queries, k, params,
                                        self.config.filter, self.config.limits)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def get_vectors(self, image_ids: list[int]) -> VectorsResult:
        loaded = self.store.current()
        if len(image_ids) > self.config.limits.max_batch:
            raise ResourceExhausted(
                f"{len(image_ids)} ids > max batch {self.config.limits.max_batch}"
            )
        view = loaded.live.get()  # one view for the whole answer
        wanted = np.asarray(image_ids, dtype=np.int64)
        from_base, from_delta = split_live_ids(view, wanted, loaded.positions(wanted)[1])
        found = from_base | from_delta
        loop = asyncio.get_running_loop()
        base_vectors = await loop.run_in_executor(self._executor, reconstruct, loaded,
                                                  wanted[from_base].tolist())
        vectors = np.empty((int(found.sum()), loaded.manifest.dim), np.float32)
        keys = delta_keys(view, wanted[found], loaded.keys_of(wanted[found]))
        base_row = 0
        for row, image_id in enumerate(wanted[found].tolist()):
            live = view.delta_vector(image_id)
            if live is not None:
                vectors[row] = live[0]
            else:
                vectors[row], base_row = base_vectors[base_row], base_row + 1
        return VectorsResult(wanted[found].tolist(), vectors, keys, wanted[~found].tolist(),
                             loaded.manifest.dim, view.applied_seq)

    async def load(self, index_uri: str) -> tuple[LoadedIndex, LoadedIndex | None]:
        """Load ``index_uri`` beside the serving version, check it, swap; the old one keeps
        serving if anything fails. Returns (new, old)."""
        async with self._load_lock:
            new = await asyncio.to_thread(load_shard, index_uri, self.config.shard,
                                          self.config.expect, self.config.index_cache_dir)
            old = self.store.current() if self.store.loaded else None
            if old is not None:
                check_compatible(old, new)
            await asyncio.to_thread(smoke_test, new)
            follower = self.follower(new)
            if follower is not None:  # serve the new version only once it has the live writes
                await follower.catch_up_fully()
            keep_s = self.config.keep_previous_s
            self.store.swap(new, keep_s)
            if old is not None and keep_s > 0:
                # Drop the previous version (and its memory) when its grace period ends.
                asyncio.get_running_loop().call_later(keep_s + 0.01, self.store.previous)
            log.info("serving %s (was %s; kept for pinned queries %.0f s)", new.version,
                     old.version if old else None, keep_s if old else 0)
            return new, old

    async def close(self) -> None:
        await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def check_compatible(old: LoadedIndex, new: LoadedIndex) -> None:
    """A swap must not change what the coordinator's queries mean."""
    if new.manifest.dim != old.manifest.dim:
        raise FailedPrecondition(
            f"new index dim {new.manifest.dim} != serving dim {old.manifest.dim}"
        )
    if new.manifest.model_version != old.manifest.model_version:
        raise FailedPrecondition(
            f"new index model version {new.manifest.model_version!r} != serving "
            f"{old.manifest.model_version!r}"
        )
    if new.manifest.num_shards != old.manifest.num_shards:
        raise FailedPrecondition(
            f"new index has {new.manifest.num_shards} shards, serving has "
            f"{old.manifest.num_shards}"
        )


def smoke_test(loaded: LoadedIndex) -> None:
    """One real query through the new index before it serves: a stored vector must come back
    with finite scores and known ids."""
    if loaded.manifest.count == 0:
        return
    query = reconstruct(loaded, [int(loaded.ids[0])])
    scores, ids = run_search(loaded, query, 1, loaded.manifest.search_params)
    if ids[0, 0] < 0 or not np.isfinite(scores).all() or not loaded.positions(ids[0])[1].all():
        raise FailedPrecondition(f"smoke query on {loaded.uri} returned no valid result")
