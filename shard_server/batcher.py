"""Micro-batching of concurrent searches (on the generic ``cbir.batching.MicroBatcher``).

Requests queued while a search runs (up to ``max_rows`` query vectors), optionally after
waiting ``window_s`` for more, are grouped by what makes a search call shareable - the same
loaded index version, k and search parameters - and each group runs as ONE ``index.search`` on
a worker thread (Faiss releases the GIL). Batching lets Faiss use one BLAS matrix product for
many queries instead of many vector products, and keeps exactly one search (with its OpenMP
threads) on the CPU at a time instead of several competing ones. At most ``max_queued``
requests wait; more are refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from cbir.batching import BatcherLimits, MicroBatcher
from cbir.options import option
from shard_server.index_store import LoadedIndex

log = logging.getLogger(__name__)

SearchFn = Callable[[LoadedIndex, np.ndarray, int, dict[str, int]], tuple[np.ndarray, np.ndarray]]
GroupKey = tuple[int, int, tuple[tuple[str, int], ...]]


@dataclass(frozen=True)
class BatchConfig:
    enabled: bool = option(True, flag="--no-batching",
                           help="one Faiss call per query (no micro-batching)")
    window_s: float = option(0.0, flag="--batch-window-ms", scale=0.001, non_negative=True,
                             metavar="MS", help="extra wait to batch concurrent queries "
                             "(queued ones always batch)")
    max_rows: int = option(256, flag="--batch-max-rows", positive=True,
                           help="query vectors per Faiss call")
    max_queued: int = 1024  # requests waiting for the search thread (RESOURCE_EXHAUSTED beyond)


Answer = tuple[np.ndarray, np.ndarray]  # scores, ids


@dataclass
class _Pending:
    loaded: LoadedIndex
    queries: np.ndarray = field(repr=False)
    k: int
    params: dict[str, int]

    def key(self) -> GroupKey:
        return (id(self.loaded), self.k, tuple(sorted(self.params.items())))


class SearchBatcher:
    def __init__(self, search: SearchFn, executor: Executor, config: BatchConfig) -> None:
        self._search = search
        self._executor = executor
        self._config = config
        # Not withdrawable: a search must finish on its thread before the next one starts.
        self._batcher: MicroBatcher[_Pending, Answer] = MicroBatcher(
            self._run_group,
            BatcherLimits(max_batch=config.max_rows, max_queued=config.max_queued,
                          window_s=config.window_s),
            name="the shard's search queue", key=_Pending.key, weight=lambda p: len(p.queries),
        )

    async def search(
        self, loaded: LoadedIndex, queries: np.ndarray, k: int, params: dict[str, int]
    ) -> Answer:
        if not self._config.enabled:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._search, loaded, queries, k, params
            )
        return await self._batcher.run(_Pending(loaded, queries, k, params))

    async def close(self) -> None:
        await self._batcher.close()

    async def _run_group(self, items: list[_Pending]) -> list[Answer]:
        first = items[0]
        queries = np.concatenate([i.queries for i in items]) if len(items) > 1 else first.queries
        scores, ids = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._search, first.loaded, queries, first.k, first.params
        )
        answers, start = [], 0
        for item in items:
            end = start + len(item.queries)
            answers.append((scores[start:end], ids[start:end]))
            start = end
        return answers
