"""The shard server process: grpc.aio + health + reflection + metrics + graceful drain.

Lifecycle: bind and start reporting NOT_SERVING -> load and verify the index off the event loop
-> SERVING -> (SIGTERM/SIGINT) NOT_SERVING, stop accepting, finish in-flight calls within
``drain_s`` -> exit. Three ways to run one:

* ``cbir serve-shard ...`` / ``python -m shard_server ...`` (prints ``listening on HOST:PORT``);
* ``await ShardServer(config).start()`` inside an event loop;
* ``with serve_in_thread(config) as server: server.port`` - a server on its own event-loop
  thread, for tests and embedding in synchronous code.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from cbir.rpc.serving import Serving
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.metrics import ShardMetrics
from shard_server.searcher import SearcherConfig, ShardSearcher
from shard_server.servicer import ShardServicer

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAME = cbir_pb2.DESCRIPTOR.services_by_name["Shard"].full_name


@dataclass(frozen=True)
class ServerConfig:
    index_uri: str
    searcher: SearcherConfig
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0  # 0 = no metrics endpoint
    drain_s: float = 5.0


class ShardServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ShardMetrics()
        self.searcher = ShardSearcher(config.searcher)
        self.serving = Serving([SERVICE_NAME], limits=config.searcher.limits)
        cbir_pb2_grpc.add_ShardServicer_to_server(
            ShardServicer(self.searcher, self.metrics), self.serving.server
        )
        self.port = 0

    async def start(self, load: bool = True) -> int:
        """Bind and start (NOT_SERVING), then load the index unless told not to."""
        self.port = self.serving.bind(self.config.host, self.config.port)
        await self.serving.start()
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.host)
        log.info("shard %d listening on %s:%d", self.config.searcher.shard,
                 self.config.host, self.port)
        if load:
            await self.load()
        return self.port

    async def load(self) -> None:
        new, _ = await self.searcher.load(self.config.index_uri)
        self.metrics.index_loaded(new)
        await self.serving.set_serving(True)

    async def stop(self, grace_s: float | None = None) -> None:
        await self.serving.drain_and_stop(self.config.drain_s if grace_s is None else grace_s)
        await self.searcher.close()
        self.metrics.close()


async def serve(config: ServerConfig, announce: bool = True) -> None:
    """Run until SIGTERM/SIGINT, then drain. Announces the port on stdout for port-0 users."""
    server = ShardServer(config)
    stop = asyncio.Event()
    server.serving.install_signal_handlers(stop)
    port = await server.start(load=False)
    if announce:
        print(f"listening on {config.host}:{port}", flush=True)
    try:
        await server.load()
    except BaseException:
        await server.stop(0)
        raise
    log.info("serving")
    await stop.wait()
    log.info("draining (up to %.1fs)", config.drain_s)
    await server.stop()


class ThreadedServer:
    """A ShardServer on its own event loop thread; ``port`` once started."""

    def __init__(self, config: ServerConfig, load: bool = True) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: ShardServer | None = None
        self._load = load
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="cbir-shard-server")

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def start(self) -> ThreadedServer:
        self._thread.start()
        self.server = self.call(self._make())
        try:
            self.call(self.server.start(load=self._load))
        except BaseException:
            self.stop(0)
            raise
        return self

    async def _make(self) -> ShardServer:
        return ShardServer(self.config)  # grpc.aio objects must be created on their loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 0.0) -> None:
        if self.server is not None and self.loop.is_running():
            self.call(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@contextmanager
def serve_in_thread(config: ServerConfig, load: bool = True) -> Iterator[ThreadedServer]:
    server = ThreadedServer(config, load=load).start()
    try:
        yield server
    finally:
        server.stop()


def main_async(config: ServerConfig) -> int:
    asyncio.run(serve(config))
    return 0
