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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cbir.errors import CbirError
from cbir.options import nested, option
from cbir.rpc.auth import DEFAULT_METHOD_ROLES, WRITE
from cbir.rpc.guard import BearerTokenInterceptor
from cbir.rpc.logs import safe_text
from cbir.rpc.security import ServerSecurity, server_credentials
from cbir.rpc.serving import Serving
from cbir.workers import workers_option
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.admin import IndexPolicy
from shard_server.metrics import ShardMetrics
from shard_server.pointer import PointerWatch, read_pointer, write_pointer
from shard_server.searcher import SearcherConfig, ShardSearcher
from shard_server.servicer import ShardServicer

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAME = cbir_pb2.DESCRIPTOR.services_by_name["Shard"].full_name
# A coordinator's push of a durable log entry. With tokens it needs the write role; without,
# it is open like Search: it only makes the replica read the (authoritative) log sooner.
APPLY_LOG = "/cbir.v1.Shard/ApplyLog"
# The admin port never leaves the pod / machine: reaching it is the admin credential.
ADMIN_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerConfig:
    # "" when index_pointer names it.
    index_uri: str = option(flag="--index", mutex="where", required=True,
                            help="index root (path or s3://) holding shard=NNN/")
    searcher: SearcherConfig = nested()
    host: str = option("127.0.0.1", help="address to listen on")
    port: int = option(50051, non_negative=True, help="0 = any free port")
    metrics_port: int = option(0, non_negative=True, help="Prometheus port; 0 = off")
    drain_s: float = option(5.0, flag="--drain-seconds", non_negative=True,
                            help="on SIGTERM, how long in-flight calls may finish")
    security: ServerSecurity = field(default_factory=ServerSecurity)
    # A small object whose content is the index URI to serve; polled, a change = LoadIndex.
    index_pointer: str | None = option(
        None, mutex="where", required=True, metavar="URI",
        help="object whose content is the index root to serve (e.g. s3://b/indexes/CURRENT); "
             "watched: a change loads the new version")
    pointer_interval_s: float = option(10.0, flag="--pointer-interval", positive=True,
                                       metavar="S", help="seconds between reads of --index-pointer")
    # Admin RPCs (LoadIndex) without a token: a second port on 127.0.0.1 only.
    admin_port: int | None = option(
        None, non_negative=True, metavar="PORT",
        help="also serve on 127.0.0.1:PORT, where admin RPCs (LoadIndex) need no token "
             "(0 = any free port; default: no admin port)")
    allowed_index_root: str = option(
        "", metavar="URI",
        help="LoadIndex and pointer targets must lie under this root "
             "(default: the folder holding --index or --index-pointer)")
    workers: int = workers_option()
    # Set in each worker of a --workers N server (never on the command line): the port is
    # shared (SO_REUSEPORT) and metrics go to metrics_port + worker_index.
    worker_index: int | None = None
    # Workers without --index-pointer: a local file naming the version a LoadIndex swapped in
    # (LoadIndex reaches one worker; the others, and restarted ones, follow the file).
    sibling_target: str = ""
    sibling_interval_s: float = 0.5


class ShardServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ShardMetrics()
        self.searcher = ShardSearcher(config.searcher)
        roots = [config.allowed_index_root] if config.allowed_index_root else []
        self.policy = IndexPolicy.build(roots, config.index_uri, config.index_pointer)
        self.pointer_target = ""  # what the pointer named at its last read
        self._pointer_error: str | None = None  # the last read failure, logged once
        servicer = ShardServicer(self.searcher, self.metrics, self.policy,
                                 lambda: self.pointer_target, self._manually_loaded)
        self.guards: list[BearerTokenInterceptor] = []  # (public[, admin]): their auth state
        self.serving = self._serving(servicer, trusted=False)
        self.admin = self._serving(servicer, trusted=True) if config.admin_port is not None \
            else None
        self.watch = PointerWatch(retry_failed_s=max(60.0, 6 * config.pointer_interval_s))
        self._watcher: asyncio.Task[None] | None = None
        self._log_stop = asyncio.Event()
        self._log_task: asyncio.Task[None] | None = None
        self.port = 0
        self.admin_port = 0

    def _serving(self, servicer: ShardServicer, trusted: bool) -> Serving:
        """A gRPC server for ``servicer``: the interceptor always runs, so admin methods are
        refused on the public port when no tokens are configured (secure by default)."""
        security = self.config.security
        roles = (*(security.auth.method_roles if security.auth else DEFAULT_METHOD_ROLES),
                 *([(APPLY_LOG, WRITE)] if security.auth else []))
        guard = BearerTokenInterceptor(security.auth, trusted=trusted,
                                       limit=security.failure_limit, method_roles=roles)
        self.guards.append(guard)
        serving = Serving([SERVICE_NAME], limits=self.config.searcher.limits,
                          interceptors=[guard], reuse_port=self.config.worker_index is not None)
        cbir_pb2_grpc.add_ShardServicer_to_server(servicer, serving.server)
        return serving

    async def start(self, load: bool = True) -> int:
        """Bind and start (NOT_SERVING), then load the index unless told not to."""
        tls = self.config.security.tls
        if self.config.security.auth is not None and tls is None:
            log.warning("bearer tokens without TLS: tokens cross the network in clear")
        creds = server_credentials(tls) if tls is not None else None
        self.port = self.serving.bind(self.config.host, self.config.port, creds)
        await self.serving.start()
        if self.admin is not None:
            assert self.config.admin_port is not None
            # Plaintext on loopback: the traffic never leaves the host (kubectl port-forward
            # tunnels it over the API server's TLS).
            self.admin_port = self.admin.bind(ADMIN_HOST, self.config.admin_port)
            await self.admin.start()
            log.info("admin port listening on %s:%d", ADMIN_HOST, self.admin_port)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port + (self.config.worker_index or 0),
                               self.config.host)
        log.info("shard %d listening on %s:%d (tls=%s, tokens=%s, index roots=%s)",
                 self.config.searcher.shard, self.config.host, self.port, tls is not None,
                 self.config.security.auth is not None, ", ".join(self.policy.allowed_roots))
        if load:
            await self.load()
        return self.port

    @property
    def _siblings(self) -> str:
        """The workers' shared LoadIndex file ("" when none: one process, or a pointer)."""
        return self.config.sibling_target if self.config.index_pointer is None else ""

    def _manually_loaded(self, uri: str) -> None:
        """A LoadIndex swapped ``uri`` in here: tell the sibling workers (one atomic write)."""
        self.watch.loaded(uri)
        if self._siblings:
            write_pointer(self._siblings, uri, check=False)

    async def load(self) -> None:
        """The first load: the pointer's target (if watching one) or ``index_uri`` (or what a
        LoadIndex on a sibling worker swapped in since)."""
        target = self.config.index_uri  # the command line's: trusted as given
        if self._siblings and Path(self._siblings).is_file():
            target = self.policy.check(await asyncio.to_thread(read_pointer, self._siblings))
        if self.config.index_pointer is not None:
            target = await asyncio.to_thread(read_pointer, self.config.index_pointer)
            self._pointer_read(self._normalised(target))
            target = self.policy.check(target)  # storage content: bounded like LoadIndex
        try:
            new, _ = await self.searcher.load(target)
        except Exception:
            self.metrics.load_failed("start")
            raise
        self.metrics.index_loaded(new, "start")
        self.watch.loaded(target)
        self._pointer_read(self.pointer_target)
        await self.set_serving(True)
        if self.searcher.log is not None and self._log_task is None:
            self._log_task = asyncio.get_running_loop().create_task(
                self.searcher.follow_log(self._log_stop))
        if self._watcher is None and (self.config.index_pointer or self._siblings):
            self._watcher = asyncio.get_running_loop().create_task(self._watch_pointer())

    async def set_serving(self, serving: bool) -> None:
        await self.serving.set_serving(serving)
        if self.admin is not None:
            await self.admin.set_serving(serving)

    def _pointer_read(self, target: str) -> None:
        if self.config.index_pointer is None:
            return
        self.pointer_target = target
        serving = self.searcher.store.current().uri if self.searcher.store.loaded else ""
        self.metrics.pointer_read(target, serving)

    def _normalised(self, target: str) -> str:
        """The pointer's target as loads and Stats spell it (so ``s3://b/v2/`` is not a new
        target every poll); a refused one as read (its load then says why)."""
        try:
            return self.policy.check(target)
        except CbirError:
            return target

    def _pointer_unreadable(self, pointer: str, reason: str) -> None:
        """Counted every poll, logged when the reason changes (not 6 lines a minute)."""
        self.metrics.pointer_errors.inc()
        level = logging.DEBUG if reason == self._pointer_error else logging.WARNING
        self._pointer_error = reason
        log.log(level, "index pointer %s unreadable (still serving %s): %s", pointer,
                safe_text(self.searcher.store.current().version), reason)

    async def _watch_pointer(self) -> None:
        """The index pointer, or the siblings' LoadIndex file (same load path, same checks)."""
        pointer = self.config.index_pointer or self._siblings
        interval = self.config.pointer_interval_s if self.config.index_pointer \
            else self.config.sibling_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.config.index_pointer or Path(pointer).is_file():
                await self.check_pointer(pointer)

    async def check_pointer(self, pointer: str) -> None:
        """One poll: load the pointer's target if it changed; failures keep the old version."""
        try:
            target = await asyncio.to_thread(read_pointer, pointer)
        except CbirError as exc:
            self._pointer_unreadable(pointer, safe_text(str(exc)))
            return
        except Exception:
            log.exception("index pointer %s unreadable", pointer)
            self.metrics.pointer_errors.inc()
            return
        self._pointer_error = None
        target = self._normalised(target)
        self._pointer_read(target)
        if not self.watch.wants(target):
            return
        log.info("index pointer %s -> %s: loading", pointer, safe_text(target))
        try:
            new, _ = await self.searcher.load(self.policy.check(target))
        except Exception as exc:
            self.watch.failed(target)
            self.metrics.load_failed("pointer")
            log.error("index %s (from pointer %s) refused, still serving %s: %s",
                      safe_text(target), pointer,
                      safe_text(self.searcher.store.current().version), safe_text(str(exc)))
            return
        self.watch.loaded(target)
        self.metrics.index_loaded(new, "pointer")
        self._pointer_read(target)

    async def stop(self, grace_s: float | None = None) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self._log_stop.set()
        grace = self.config.drain_s if grace_s is None else grace_s
        servers = [self.serving, *([self.admin] if self.admin is not None else [])]
        await asyncio.gather(*(s.drain_and_stop(grace) for s in servers))
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
        if server.admin is not None:
            print(f"admin listening on {ADMIN_HOST}:{server.admin_port}", flush=True)
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
