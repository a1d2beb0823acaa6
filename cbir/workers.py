"""``--workers N``: N server processes on one port (SO_REUSEPORT), started and supervised here.

A gRPC Python server uses about one core however many the pod has (the GIL), so a server with
``--workers N`` is a parent that reserves the port and N worker processes that each run today's
single-process server bound to that port with ``SO_REUSEPORT``; the kernel spreads new
connections over the workers' listening sockets. The parent:

- reserves the port first (a socket bound with ``SO_REUSEPORT`` but never listening: it gets no
  connections, but it turns ``--port 0`` into one concrete port for every worker and keeps the
  port from anyone else while a worker restarts);
- starts the workers (``multiprocessing`` spawn: a fresh interpreter each, nothing of the
  parent's threads or gRPC state is inherited) and waits until each reports that it serves;
- restarts a worker that dies (SIGKILL, OOM kill, crash) with a growing back-off; a worker that
  fails before it ever served the first time is a start-up error (a bad index, say): the parent
  stops the others and exits with its code, as the single process would;
- on SIGTERM / SIGINT forwards SIGTERM to every worker (each drains like a single server) and
  exits once they have, after ``grace_s`` at most.

Nothing here knows a server: a worker is ``target(*args, WorkerLink)`` in a module-level
function the servers provide (``shard_server.workers.run_worker``,
``coordinator.workers.run_worker``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cbir.errors import CbirError, FailedPrecondition, InvalidArgument
from cbir.options import option

log = logging.getLogger(__name__)

LOADED, GO, READY = "loaded", "go", "ready"
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # after the 1st, 2nd... death in a row
STABLE_S = 30.0  # a worker that lived this long resets its back-off


def workers_option() -> Any:
    """The ``--workers`` field every server config declares (``CBIR_WORKERS``)."""
    return option(1, positive=True, metavar="N",
                  help="server processes sharing the port (SO_REUSEPORT); a shard's workers "
                       "share one memory-mapped copy of the index. 1 = this process serves")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and never listening: it fixes the port
    (``port`` 0 = any free one) for the workers, which bind it the same way."""
    bare = host.strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(bare, port,
                                                              type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgument(f"cannot listen on {host}:{port}: unknown host") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise FailedPrecondition(f"cannot listen on {host}:{port}: {exc.strerror} "
                                 "(another server? pick another --port, or 0)") from exc
    return sock


@dataclass
class WorkerLink:
    """A worker's end of its pipe to the parent. ``wait_go()`` once loaded: at start the parent
    lets the workers bind only when ALL have loaded, so the first clients' connections spread
    over every worker instead of sticking to the first one ready; ``ready()`` once serving.
    If the parent dies (its end closes), the worker gets SIGTERM and drains: no orphans."""

    index: int
    conn: Connection
    go: threading.Event = field(default_factory=threading.Event)

    def wait_go(self) -> None:
        self.conn.send((LOADED, os.getpid()))
        self.go.wait()

    def ready(self) -> None:
        self.conn.send((READY, os.getpid()))

    def watch_parent(self) -> None:
        def wait() -> None:
            try:
                while True:
                    if self.conn.recv() == GO:
                        self.go.set()
            except (EOFError, OSError):
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=wait, daemon=True, name="cbir-parent-watch").start()


def _child(prog: str, setup: Callable[[], None], target: Callable[..., None],
           args: tuple[Any, ...], index: int, conn: Connection) -> None:
    """The worker process's entry point: the CLI's error contract (one line, exit 2)."""
    setup()
    link = WorkerLink(index, conn)
    link.watch_parent()
    try:
        target(*args, link)
    except CbirError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing.Process
    conn: Connection | None = None
    started: float = 0.0
    loaded: bool = False  # this generation is loaded and waits for GO
    served: bool = False  # reported ready at least once (any generation)
    deaths: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts ``count`` workers of ``target`` and keeps them running until ``stop()``."""

    def __init__(self, prog: str, count: int, target: Callable[..., None],
                 args: Sequence[Any], setup: Callable[[], None], grace_s: float) -> None:
        self.prog, self.target, self.args, self.setup = prog, target, tuple(args), setup
        self.grace_s = grace_s
        self.slots = [_Slot(i) for i in range(count)]
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._all_loaded = False  # the first generation has been let in
        self.exit_code = 0

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child, name=f"{self.prog} worker {slot.index}",
            args=(self.prog, self.setup, self.target, self.args, slot.index, child))
        process.start()
        child.close()  # the worker holds the only other end: EOF here when it dies
        slot.process, slot.conn, slot.started, slot.restart_at = process, parent, \
            time.monotonic(), None
        log.info("worker %d started (pid %d)", slot.index, process.pid)

    def start(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def stop(self, *_: Any) -> None:
        """SIGTERM every worker (each drains); ``run`` returns once they have exited."""
        if self._stopping:
            return
        self._stopping = True
        log.info("draining %d workers (up to %.1fs)", len(self.slots), self.grace_s)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                os.kill(slot.process.pid, signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped (or a start-up failure); returns the exit code."""
        self.start()
        while not self._stopping:
            self._step(timeout=0.2)
        self._join_all()
        return self.exit_code

    def _step(self, timeout: float) -> None:
        waiting = {slot.conn: slot for slot in self.slots if slot.conn is not None}
        sentinels = {slot.process.sentinel: slot for slot in self.slots
                     if slot.process is not None}
        ready = multiprocessing.connection.wait([*waiting, *sentinels], timeout)
        for item in ready:
            if item in waiting:
                self._message(waiting[item])
        for item in ready:
            if item in sentinels:
                self._died(sentinels[item])
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                self._start(slot)

    def _message(self, slot: _Slot) -> None:
        assert slot.conn is not None
        try:
            kind, pid = slot.conn.recv()
        except (EOFError, OSError):
            slot.conn = None  # the worker is gone; its sentinel reports it
            return
        if kind == LOADED:
            slot.loaded = True
            self._let_in()
        elif kind == READY:
            slot.served = True
            slot.pids.append(pid)
            log.info("worker %d (pid %d) serving", slot.index, pid)

    def _let_in(self) -> None:
        """GO to loaded workers: at start only once all are loaded; later (a restarted one)
        at once."""
        if not self._all_loaded and not all(s.loaded for s in self.slots):
            return
        self._all_loaded = True
        for slot in self.slots:
            if slot.loaded and slot.conn is not None:
                slot.loaded = False
                with contextlib.suppress(OSError):  # it just died: its sentinel says so
                    slot.conn.send(GO)

    def _died(self, slot: _Slot) -> None:
        process = slot.process
        process.join()
        code = process.exitcode
        slot.process, slot.loaded = None, False
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        if self._stopping:
            return
        if not slot.served:  # the first start failed: a configuration or index error
            log.error("worker %d exited with %s before serving; stopping", slot.index, code)
            self.exit_code = code if code and code > 0 else 1
            self.stop()
            return
        lived = time.monotonic() - slot.started
        slot.deaths = 0 if lived >= STABLE_S else slot.deaths + 1
        delay = RESTART_BACKOFF_S[min(slot.deaths, len(RESTART_BACKOFF_S) - 1)]
        log.warning("worker %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                    slot.index, process.pid, code, lived, delay)
        slot.restart_at = time.monotonic() + delay

    def _join_all(self) -> None:
        deadline = time.monotonic() + self.grace_s + 10.0  # drain, then the process's exit
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.warning("worker %d did not drain in time; killing it", slot.index)
                slot.process.kill()
                slot.process.join()


def supervise(prog: str, count: int, target: Callable[..., None], args: Sequence[Any],
              setup: Callable[[], None], grace_s: float) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit code (0 after a clean drain)."""
    supervisor = Supervisor(prog, count, target, args, setup, grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.stop)
    return supervisor.run()


@dataclass(frozen=True)
class LogSetup:
    """The parent's logging, repeated in each (spawned) worker: level and format."""

    log_format: str = "text"
    level: int = logging.WARNING

    @classmethod
    def of_parent(cls, log_format: str) -> LogSetup:
        return cls(log_format, logging.getLogger().getEffectiveLevel())

    def __call__(self) -> None:
        from cbir.rpc.logs import configure

        logging.basicConfig(level=self.level,
                            format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        configure(self.log_format)
