"""Child processes running the ``cbir`` CLI (servers for the demo and the benchmarks).

Every child is terminated on exit (SIGTERM so servers drain, then SIGKILL after a grace), and
its output goes to a log file that error messages quote, so a crashed server fails fast with
its own last words instead of a timeout.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default low bound


def free_port() -> int:
    """A port free now, for a child server to bind. Chosen below the ephemeral range: a port
    the kernel handed out for ``bind(0)`` is also what it hands to any process's outgoing
    connections, which took one between this check and the child's bind (a CI run failed
    with "the port is in use")."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every port tried was taken: let the kernel pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cbir_command(*argv: str) -> list[str]:
    """The command line running ``cbir ARGV`` with this interpreter."""
    return [sys.executable, "-m", "cbir.cli", *argv]


class ChildProcesses:
    """A group of child processes, each logging to ``log_dir/<name>.log``."""

    def __init__(self, log_dir: Path, stop_grace_s: float = 15.0) -> None:
        self.log_dir = log_dir
        self.stop_grace_s = stop_grace_s
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def __enter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def start(self, name: str, command: Sequence[str]) -> None:
        log_file = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(list(command), stdout=log_file, stderr=subprocess.STDOUT)
        self.children.append((name, proc, log_file))

    def exited(self) -> tuple[str, int] | None:
        """(name, exit code) of a child that has stopped, if any."""
        for name, proc, _ in self.children:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def check_alive(self) -> None:
        if (gone := self.exited()) is not None:
            raise RuntimeError(f"{gone[0]} exited {gone[1]}: {self.tail(gone[0])}")

    def tail(self, name: str, chars: int = 1500) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_serving(self, address: str, service: str, timeout_s: float) -> None:
        """Block until ``address`` reports SERVING; fail at once if a child died."""
        from cbir.rpc.health import wait_serving

        wait_serving(address, service, timeout_s, between_checks=self.check_alive)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for _, proc, _ in self.children:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, log_file in self.children:
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.close()
