"""The workers of ``cbir serve-coordinator --workers N`` (the supervising parent is
``cbir.workers``).

Each worker is a whole coordinator on the shared port (SO_REUSEPORT): its own channel to every
replica, its own balancer state (in-flight counts, latency EWMAs, ejections) and its own caches
(answers, query embeddings) and query embedder. Nothing is shared, so N workers hold N copies of
the embedding model and of the caches; a client connection sticks to one worker.
"""

from __future__ import annotations

import asyncio
import dataclasses

from cbir.workers import LogSetup, WorkerLink, reserve_port, supervise
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer, default_embedder_factory, topology_source


def run_worker(config: CoordinatorConfig, link: WorkerLink) -> None:
    asyncio.run(_serve_worker(dataclasses.replace(config, worker_index=link.index), link))


async def _serve_worker(config: CoordinatorConfig, link: WorkerLink) -> None:
    server = CoordinatorServer(config, topology_source(config), default_embedder_factory(config))
    await asyncio.to_thread(link.wait_go)  # all workers bind together: connections spread
    await server.start()
    link.ready()  # bound; health turns SERVING once shards and embedder are ready, as today
    await server.run_until_signal()


def serve_workers(config: CoordinatorConfig, log_format: str) -> int:
    """The parent: reserves the port (0 -> one port for all) and announces it like the single
    process, then supervises the workers until SIGTERM."""
    public = reserve_port(config.host, config.port)
    worker = dataclasses.replace(config, port=public.getsockname()[1])
    print(f"listening on {config.host}:{worker.port}", flush=True)
    try:
        return supervise("cbir serve-coordinator", config.workers, run_worker, (worker,),
                         LogSetup.of_parent(log_format), config.drain_grace_s)
    finally:
        public.close()
