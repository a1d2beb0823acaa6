"""Progress of a batch job in its own units (images, shards), with rate and ETA.

On a terminal: a tqdm bar. Elsewhere (Kubernetes logs, CI, a file): one plain line every
``LINE_INTERVAL_S`` seconds, because a bar's carriage returns make one endless log line.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

LINE_INTERVAL_S = 5.0


class _Lines:
    """A file for tqdm that turns its ``\\r``-redrawn bar into one line per update."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.strip("\r\n")
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """``progress(done)`` with the cumulative count; a context manager closing the bar."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        out = stream or sys.stderr
        tty = out.isatty()
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not enabled,
                        file=out if tty else _Lines(out), ascii=not tty,
                        mininterval=0.1 if tty else LINE_INTERVAL_S,
                        maxinterval=LINE_INTERVAL_S * 2, dynamic_ncols=tty)

    def __call__(self, done: int) -> None:
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.close()
