from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coordinator.harness import Cluster, LoopThread, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    loop = LoopThread()
    c = start_cluster(loop)
    yield c
    c.close()
    loop.close()
