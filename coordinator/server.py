"""The coordinator process: gRPC server, background topology/stats refresh, replica probing,
embedder loading, health, metrics and graceful drain.

Health: NOT_SERVING until (1) every shard has at least one replica address, (2) at least one
shard has reported its Stats (dim, metric, model version are known) and (3) the query embedder
is loaded (unless image queries are off). Once SERVING it stays so until drain: a shard that
loses every replica later gives partial answers, which is the designed behaviour, and
flapping readiness on a downstream would only take the coordinator out of its own Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from cbir.rpc.guard import BearerTokenInterceptor
from cbir.rpc.security import server_credentials
from cbir.rpc.serving import Serving
from coordinator.caching import QueryCaches
from coordinator.config import CoordinatorConfig
from coordinator.fanout import Fanout
from coordinator.log_positions import LogPositions, LogTail
from coordinator.metrics import CoordinatorMetrics
from coordinator.query_embedder import EmbeddingRunner, QueryEmbedder, load_query_embedder
from coordinator.search import DistributedSearch, cluster_info
from coordinator.service import CoordinatorState, QueryService
from coordinator.servicer import CoordinatorServicer
from coordinator.topology import (
    DnsTopology,
    StaticTopology,
    Topology,
    TopologySource,
    dnspython_resolver,
)
from coordinator.write_service import WriteService
from protos import cbir_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "cbir.v1.Coordinator"
EmbedderFactory = Callable[[], QueryEmbedder]


def topology_source(config: CoordinatorConfig) -> TopologySource:
    if config.topology_file is not None:
        return StaticTopology.from_file(config.topology_file)
    if config.shard_dns is None:
        raise ValueError("either topology_file or shard_dns is needed")
    return DnsTopology(config.shard_dns, config.num_shards, dnspython_resolver(config.dns_server))


def default_embedder_factory(config: CoordinatorConfig) -> EmbedderFactory | None:
    if not config.image_queries:
        return None
    return lambda: load_query_embedder(config.model, config.weights, config.device,
                                       config.runtime)


class CoordinatorServer:
    def __init__(
        self,
        config: CoordinatorConfig,
        source: TopologySource,
        embedder_factory: EmbedderFactory | None,
        rng: random.Random | None = None,
    ) -> None:
        if source.num_shards != config.num_shards:
            raise ValueError(f"topology has {source.num_shards} shards, config {config.num_shards}")
        self.config = config
        self.source = source
        self.metrics = CoordinatorMetrics()
        self.fanout = Fanout(config, self.metrics, rng)
        self.search = DistributedSearch(self.fanout, config.num_shards)
        self.state = CoordinatorState(image_queries=embedder_factory is not None)
        self._embedder_factory = embedder_factory
        auth = config.security.auth
        interceptors = [BearerTokenInterceptor(auth)] if auth is not None else []
        self.serving = Serving([SERVICE_NAME], config.limits, interceptors=interceptors,
                               reuse_port=config.worker_index is not None)
        # The result cache's keys carry the shards' log positions (coordinator.log_positions).
        self.positions = LogPositions(config.num_shards)
        self.fanout.view.positions = self.positions
        self.log_tail = LogTail(config.wal, self.positions) if config.wal else None
        self.service = QueryService(config.limits, self.state, self.search,
                                    config.deadline_margin_s,
                                    QueryCaches(config.cache, self.metrics.cache_lookups,
                                                self.positions))
        self.writes = WriteService(config.wal, config.num_shards, self.state, self.fanout,
                                   config.limits, config.wal_push_timeout_s, self.positions) \
            if config.wal else None
        servicer = CoordinatorServicer(self.service, self.metrics, self.writes)
        cbir_pb2_grpc.add_CoordinatorServicer_to_server(servicer, self.serving.server)
        self.topology: Topology = {}
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_stats = float("-inf")
        self._pinned: str | None = None
        self.port = 0

    async def start(self) -> int:
        if self.config.wal and self.config.security.auth is None:
            # Writes stay open without tokens (local use, the demo), but an operator must know.
            log.warning("--wal without --auth-token-file: Upsert/Delete are open to every "
                        "client that reaches this port; configure tokens with the 'write' role")
        tls = self.config.security.tls
        creds = server_credentials(tls) if tls is not None else None
        self.port = self.serving.bind(self.config.host, self.config.port, creds)
        await self.serving.start()
        if self.config.metrics_port is not None:  # worker i of --workers N: port + i
            self.metrics.serve(self.config.metrics_port + (self.config.worker_index or 0),
                               self.config.host)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(_every(self.refresh, self._refresh_period, "topology refresh")),
            loop.create_task(_every(self.fanout.probe_ejected, self._probe_period,
                                    "replica probing")),
            loop.create_task(_every(self.poll_versions, lambda: self.config.version_interval_s,
                                    "index version polling")),
        ]
        if self.log_tail is not None:
            self._tasks.append(loop.create_task(_every(
                self.log_tail.poll, lambda: self.config.wal_tail_interval_s, "log tail")))
        if self._embedder_factory is not None:
            self._tasks.append(loop.create_task(self._load_embedder(self._embedder_factory)))
        log.info("coordinator listening on %s:%d", self.config.host, self.port)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        await self.serving.drain_and_stop(self.config.drain_grace_s if grace_s is None else grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.search.close()
        await self.fanout.close()
        if self.state.embedder is not None:
            await self.state.embedder.close()

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        self.serving.install_signal_handlers(stop)
        await stop.wait()
        log.info("draining (grace %.1f s)", self.config.drain_grace_s)
        await self.stop()

    # ------------------------------------------------------------- background

    async def refresh(self) -> None:
        """Re-resolve replicas; fetch the shards' stats when due; update health."""
        self.topology = await self.source.resolve(self.topology)
        self.fanout.update_topology(self.topology)
        now = time.monotonic()
        if self.state.info is None or now - self._last_stats >= self.config.stats_interval_s:
            stats = await self.search.stats(now + max(self.config.probe_timeout_s, 1.0))
            if stats:
                self.state.info = cluster_info(self.config.num_shards, stats)
                self._last_stats = now
        await self._update_health()

    async def _update_health(self) -> None:
        if self.ready.is_set():
            return
        every_shard_seen = all(self.topology.get(s) for s in range(self.config.num_shards))
        embedder_ok = not self.state.image_queries or self.state.embedder is not None
        if every_shard_seen and self.state.info is not None and embedder_ok:
            await self.serving.set_serving(True)
            self.ready.set()
            log.info("coordinator ready: %s", self.state.info)

    def _refresh_period(self) -> float:
        # Poll fast until ready, so start-up does not wait a whole resolve interval.
        interval = self.config.resolve_interval_s
        return interval if self.ready.is_set() else min(interval, 0.2)

    async def poll_versions(self) -> None:
        """Refresh which versions the live replicas hold; publish the pinned one."""
        await self.fanout.poll_versions(self.config.probe_timeout_s)
        pinned = self.fanout.pinned_version()
        if pinned != self._pinned:
            log.info("index version for queries: %s (was %s)", pinned, self._pinned)
            self.metrics.version_info.clear()
            if pinned is not None:
                self.metrics.version_info.labels(pinned).set(1)
            self._pinned = pinned

    def _probe_period(self) -> float:
        return max(self.config.balancer.reprobe_interval_s / 2, 0.05)

    async def _load_embedder(self, factory: EmbedderFactory) -> None:
        try:
            embedder = await asyncio.to_thread(factory)
        except Exception as exc:
            log.exception("loading the query embedder failed")
            self.state.embedder_error = f"{type(exc).__name__}: {exc}"
            return
        self.state.embedder = EmbeddingRunner(embedder,
                                              max_queued=self.config.embed_max_queued)
        log.info("query embedder %s (dim %d, version %s) loaded",
                 embedder.name, embedder.dim, embedder.version)
        await self._update_health()


async def _every(work: Callable[[], Awaitable[None]], period: Callable[[], float],
                 what: str) -> None:
    """Run ``work`` forever, ``period()`` seconds apart; a failed round is logged, not fatal."""
    while True:
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(period())


async def serve(config: CoordinatorConfig) -> None:
    server = CoordinatorServer(
        config, topology_source(config), default_embedder_factory(config)
    )
    port = await server.start()
    # The CLI's contract, like the shard's: scripts and tests started with --port 0 read it.
    print(f"listening on {config.host}:{port}", flush=True)
    await server.run_until_signal()
