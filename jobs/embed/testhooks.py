"""TEST-ONLY fault injection: kill the Python worker running a task, once.

``CBIR_TEST_KILL_ONCE=/path/marker`` makes the first task that reaches the kill point (across
every worker process: the marker is created with O_EXCL) write its part name into the marker
and SIGKILL its own process, as a crashed or OOM-killed executor would die. Spark then retries
the task (``spark.task.maxFailures``). ``CBIR_TEST_KILL_AT`` picks the point:
``after_commit`` (default: the part is written, so the retry must skip it, not duplicate it)
or ``before_commit`` (the errors part may exist, the embeddings part not). Never set these in
production; with the sequential engine it kills the driver.
"""

from __future__ import annotations

import logging
import os
import signal

KILL_ONCE_ENV = "CBIR_TEST_KILL_ONCE"
KILL_AT_ENV = "CBIR_TEST_KILL_AT"

log = logging.getLogger(__name__)


def maybe_die(point: str, part: str) -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker or os.environ.get(KILL_AT_ENV, "after_commit") != point:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # someone already died once
    os.write(fd, part.encode())
    os.close(fd)
    log.warning("test hook: killing this worker (pid %d) at %s of %s", os.getpid(), point, part)
    os.kill(os.getpid(), signal.SIGKILL)
