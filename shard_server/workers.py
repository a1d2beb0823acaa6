"""The workers of ``cbir serve-shard --workers N`` (the supervising parent is ``cbir.workers``).

Each worker is today's single-process ``ShardServer`` with the port shared (SO_REUSEPORT) and
the index files kept once in a shared directory and memory-mapped (``--index-cache-dir``;
docs/shard_server.md, "Workers"). Index rolls happen in every worker on its own: each follows
the pointer and the write-ahead log itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

from cbir.workers import LogSetup, WorkerLink, reserve_port, supervise
from shard_server.server import ADMIN_HOST, ServerConfig, ShardServer

log = logging.getLogger(__name__)


def run_worker(config: ServerConfig, link: WorkerLink) -> None:
    """One worker of a ``--workers N`` server (in its own process)."""
    asyncio.run(_serve_worker(dataclasses.replace(config, worker_index=link.index), link))


async def _serve_worker(config: ServerConfig, link: WorkerLink) -> None:
    """Load first, then join the shared port: a connection never lands on a worker that cannot
    answer yet (a restarted one included). Drains on SIGTERM like the single process."""
    server = ShardServer(config)
    stop = asyncio.Event()
    server.serving.install_signal_handlers(stop)
    try:
        await server.load()
        await asyncio.to_thread(link.wait_go)
        await server.start(load=False)
        await server.set_serving(True)
    except BaseException:
        await server.stop(0)
        raise
    link.ready()
    await stop.wait()
    log.info("worker %d draining (up to %.1fs)", link.index, config.drain_s)
    await server.stop()


def serve_workers(config: ServerConfig, log_format: str) -> int:
    """The parent of ``config.workers`` workers: reserves the ports (port 0 -> one port for
    all), shares one index cache directory, announces the ports as the single process does."""
    public = reserve_port(config.host, config.port)
    admin = reserve_port(ADMIN_HOST, config.admin_port) \
        if config.admin_port is not None else None
    own_cache = not config.searcher.index_cache_dir
    cache = config.searcher.index_cache_dir or tempfile.mkdtemp(prefix="cbir-index-")
    worker = dataclasses.replace(
        config, port=public.getsockname()[1],
        admin_port=admin.getsockname()[1] if admin is not None else None,
        searcher=dataclasses.replace(config.searcher, index_cache_dir=cache),
        sibling_target=str(Path(tempfile.mkdtemp(prefix="cbir-workers-")) / "loaded-index"))
    print(f"listening on {config.host}:{worker.port}", flush=True)
    if admin is not None:
        print(f"admin listening on {ADMIN_HOST}:{worker.admin_port}", flush=True)
    log.info("shard %d: %d workers on port %d, index files in %s (pid %d)",
             config.searcher.shard, config.workers, worker.port, cache, os.getpid())
    try:
        return supervise("cbir serve-shard", config.workers, run_worker, (worker,),
                         LogSetup.of_parent(log_format), config.drain_s)
    finally:
        public.close()
        if admin is not None:
            admin.close()
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(Path(worker.sibling_target).parent, ignore_errors=True)
