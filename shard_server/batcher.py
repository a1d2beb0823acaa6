"""Micro-batching of concurrent searches (asyncio, no grpc).

One worker coroutine takes every request queued so far (up to ``max_rows`` query vectors),
optionally waits ``window_s`` for more, groups them by what makes a search call shareable - the
same loaded index version, k and search parameters - and runs ONE ``index.search`` per group on
a worker thread (Faiss releases the GIL). Batching lets Faiss use one BLAS matrix product for
many queries instead of many vector products, and keeps exactly one search (with its OpenMP
threads) on the CPU at a time instead of several competing ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

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


@dataclass
class _Pending:
    loaded: LoadedIndex
    queries: np.ndarray
    k: int
    params: dict[str, int]
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = field(repr=False)

    def key(self) -> GroupKey:
        return (id(self.loaded), self.k, tuple(sorted(self.params.items())))


class MicroBatcher:
    def __init__(self, search: SearchFn, executor: Executor, config: BatchConfig) -> None:
        self._search = search
        self._executor = executor
        self._config = config
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def search(
        self, loaded: LoadedIndex, queries: np.ndarray, k: int, params: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        if not self._config.enabled:
            return await loop.run_in_executor(
                self._executor, self._search, loaded, queries, k, params
            )
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="cbir-search-batcher")
        pending = _Pending(loaded, queries, k, params, loop.create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        rows = len(batch[0].queries)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.window_s
        while rows < self._config.max_rows:
            if self._queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            batch.append(item)
            rows += len(item.queries)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[GroupKey, list[_Pending]] = defaultdict(list)
            for item in batch:
                groups[item.key()].append(item)
            for items in groups.values():
                await self._run_group(items)

    async def _run_group(self, items: list[_Pending]) -> None:
        live = [i for i in items if not i.future.done()]  # cancelled callers are skipped
        if not live:
            return
        first = live[0]
        queries = np.concatenate([i.queries for i in live]) if len(live) > 1 else first.queries
        loop = asyncio.get_running_loop()
        try:
            scores, ids = await loop.run_in_executor(
                self._executor, self._search, first.loaded, queries, first.k, first.params
            )
        except Exception as exc:  # delivered to every caller of the group
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in live:
            end = start + len(item.queries)
            if not item.future.done():
                item.future.set_result((scores[start:end], ids[start:end]))
            start = end
