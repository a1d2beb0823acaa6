"""Filtered search on one shard (no grpc): filter -> row mask -> allowed ids -> search.

The filter (``cbir.filters``) is evaluated with pyarrow compute over the shard's metadata
table. What passes becomes a *plan*, cached per loaded index and filter text (the index is
immutable, so a plan never goes stale; a new index version has its own cache):

- few rows pass (``exact_rows`` / ``exact_fraction``): their vectors are gathered once and the
  query is answered by brute force over them. An ANN graph or inverted lists restricted to a
  handful of ids starve (HNSW walks through rejected nodes, IVF probes lists with no passing
  ids), so this is both exact and faster than the index;
- otherwise: a ``faiss.IDSelectorBatch`` over the allowed ids goes into the call's
  SearchParameters, and the ANN effort (nprobe / efSearch) is scaled by 1 / selectivity (capped
  by ``max_boost``), because the filtered top-k sit as deep in the unfiltered ranking as
  k / selectivity.

The live index (docs/live_updates.md): the base part hides the tombstoned rows exactly (the
brute-force path asks for as many more rows as the plan's rows are hidden; the selector path
intersects the plan's selector with the tombstone selector), and the same compiled filter runs
over the delta's metadata rows (``shard_server.delta``): the live delta rows that pass are
searched exactly and merged with the base part, so a filtered answer stays exact for exact
indexes and includes live upserts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss as _faiss
import numpy as np
import pyarrow as pa

from cbir.cache import ByteBudgetCache
from cbir.faiss_params import EF_SEARCH, NPROBE, nlist, param_name, search_parameters
from cbir.filters import Filter, matching_rows, parse_filter
from cbir.limits import Limits
from cbir.options import option
from shard_server.index_store import LoadedIndex
from shard_server.live import kth_scores, without_hidden
from shard_server.segments import LiveView, merge_top_k

faiss: Any = _faiss  # the stubs lag the SWIG module (IDSelectorBatch, swig_ptr)


@dataclass(frozen=True)
class FilterConfig:
    # Defaults measured with `python -m bench filter` (docs/filters.md): below ~2% of a shard
    # brute force over the passing rows beats a selector-restricted ANN search and is exact.
    exact_rows: int = option(4096, flag="--filter-exact-rows", non_negative=True, metavar="N",
                             help="search a filter's rows by brute force when at most N pass")
    exact_fraction: float = option(0.02, flag="--filter-exact-fraction", non_negative=True,
                                   metavar="F", help="also search a filter's rows by brute "
                                   "force when at most this fraction of the shard passes")
    max_boost: int = option(16, flag="--filter-max-boost", positive=True, metavar="X",
                            help="most nprobe / efSearch is multiplied by under a filter")
    plan_cache_bytes: int = option(256 * 1024 * 1024, flag="--filter-cache-bytes",
                                   non_negative=True, metavar="BYTES",
                                   help="memory for evaluated filters per index version "
                                        "(0 = evaluate every time)")


@dataclass(frozen=True, eq=False)
class FilterPlan:
    """What one filter selects in one loaded index."""

    ids: np.ndarray  # int64, sorted: the image ids that pass
    fraction: float  # of the shard's rows
    vectors: np.ndarray | None  # float32 (len(ids), dim) when answered by brute force
    selector: Any | None  # faiss.IDSelectorBatch when answered by the index
    filter: Filter | None = None  # compiled for this index's schema (also the delta's)

    @property
    def nbytes(self) -> int:
        """About its memory: IDSelectorBatch keeps a hash set of the ids (~5 x 8 bytes each)."""
        held = int(self.vectors.nbytes) if self.vectors is not None else 5 * int(self.ids.nbytes)
        return int(self.ids.nbytes) + held + 256


def metadata_of(loaded: LoadedIndex) -> pa.Table:
    if loaded.metadata is not None:
        return loaded.metadata
    return pa.table({"image_id": pa.array(loaded.ids, pa.int64()), "key": loaded.keys})


def schema_of(loaded: LoadedIndex) -> pa.Schema:
    return metadata_of(loaded).schema


def compile_filter(loaded: LoadedIndex, text: str) -> Filter:
    """Parse + validate against this shard's columns (InvalidArgument names what is wrong)."""
    return parse_filter(text, schema_of(loaded))


def gather(loaded: LoadedIndex, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``ids`` (one Faiss call; exact for Flat/HNSW/IVF-Flat)."""
    if not len(ids):
        return np.zeros((0, loaded.manifest.dim), np.float32)
    return np.asarray(loaded.index.reconstruct_batch(ids), dtype=np.float32)


def make_plan(loaded: LoadedIndex, flt: Filter, config: FilterConfig) -> FilterPlan:
    rows = matching_rows(metadata_of(loaded), flt)
    ids = np.ascontiguousarray(loaded.ids[rows], dtype=np.int64)
    fraction = len(ids) / max(len(loaded.ids), 1)
    if len(ids) <= config.exact_rows or fraction <= config.exact_fraction:
        return FilterPlan(ids, fraction, gather(loaded, ids), None, flt)
    selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
    return FilterPlan(ids, fraction, None, selector, flt)


class FilterPlans:
    """Plans per (loaded index, filter text), bounded in bytes."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self._cache: ByteBudgetCache[FilterPlan] = ByteBudgetCache(
            config.plan_cache_bytes, lambda plan: plan.nbytes)

    def plan(self, loaded: LoadedIndex, text: str) -> FilterPlan:
        key = (id(loaded), loaded.version, text)
        found = self._cache.get(key)
        if found is not None:
            return found
        plan = make_plan(loaded, compile_filter(loaded, text), self.config)
        self._cache.put(key, plan)
        return plan


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over ``vectors``: (scores, ids), -1 / -inf padded, ties by id
    (``ids`` is sorted, so a stable sort on -score keeps the smaller id first)."""
    n = len(queries)
    scores = np.full((n, k), -np.inf, np.float32)
    out = np.full((n, k), -1, np.int64)
    take = min(k, len(ids))
    if take == 0:
        return scores, out
    sims = queries @ vectors.T
    top = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < len(ids) else \
        np.broadcast_to(np.arange(len(ids)), (n, len(ids)))
    top_scores = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((np.take(ids, top), -top_scores), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    scores[:, :take] = np.take_along_axis(top_scores, order, axis=1)
    out[:, :take] = ids[top]
    return scores, out


def boosted(loaded: LoadedIndex, params: dict[str, int], fraction: float, config: FilterConfig,
            limits: Limits) -> dict[str, int]:
    """The ANN effort scaled by 1 / selectivity, within the index's and the limits' range."""
    name = param_name(loaded.index)
    if name is None or fraction >= 1.0:
        return params
    boost = min(float(config.max_boost), 1.0 / max(fraction, 1e-9))
    out = dict(params)
    if name == NPROBE:
        base = params.get(NPROBE) or int(faiss.extract_index_ivf(loaded.index).nprobe)
        out[NPROBE] = min(nlist(loaded.index), int(np.ceil(base * boost)))
    else:
        base = params.get(EF_SEARCH) or 16
        out[EF_SEARCH] = min(limits.max_ef_search, int(np.ceil(base * boost)))
    return out


def without_tombstones(plan_selector: Any, view: LiveView) -> Any:
    """The plan's selector, also refusing the view's tombstoned ids (an exact restriction)."""
    hidden = view.base_selector()
    if hidden is None:
        return plan_selector
    both = faiss.IDSelectorAnd(plan_selector, hidden)
    both.referenced_objects = [plan_selector, hidden]  # SWIG holds raw pointers
    return both


def live_filtered_search(loaded: LoadedIndex, plan: FilterPlan, view: LiveView,
                         queries: np.ndarray, k: int, params: dict[str, int],
                         config: FilterConfig, limits: Limits
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The top-k live rows that pass ``plan``: the base's (tombstones hidden) and the
    delta's, merged exactly; runs on a worker thread."""
    if plan.vectors is not None:
        hidden = int(np.isin(view.tombstones, plan.ids).sum()) if len(view.tombstones) else 0
        scores, ids = brute_force(plan.vectors, plan.ids, queries, k + hidden)
        scores, ids = without_hidden(view, scores, ids, k) if hidden else (scores, ids)
    else:
        effort = boosted(loaded, params, plan.fraction, config, limits)
        selector = without_tombstones(plan.selector, view)
        scores, ids = loaded.index.search(
            queries, k, params=search_parameters(loaded.index, effort, selector))
    rows = delta_rows(view, plan)
    if not len(rows):
        return scores, ids
    delta_scores, delta_ids = view.delta_candidates(queries, k, rows, kth_scores(scores, ids))
    if not delta_ids.shape[1]:
        return scores, ids
    return merge_top_k(scores, ids, delta_scores, delta_ids, k)


def delta_rows(view: LiveView, plan: FilterPlan) -> np.ndarray:
    """The live delta rows that pass the plan's filter (ascending)."""
    delta = view.delta
    if not delta.live_count or plan.filter is None:
        return np.zeros(0, np.int64)
    passing = delta.store.matching(plan.filter, delta.size) & delta.live_mask()
    return np.flatnonzero(passing)
