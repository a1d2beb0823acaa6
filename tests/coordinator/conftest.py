from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coordinator.harness import Cluster, LoopThread, start_cluster


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def cluster(loop_thread: LoopThread) -> Iterator[Cluster]:
    c = start_cluster(loop_thread)
    yield c
    c.close()
