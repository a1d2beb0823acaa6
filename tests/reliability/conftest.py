"""Shared fixtures: index versions built once per session by the real build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.build_index import fixtures as fx
from tests.reliability.cluster import ShardProcess, Version, build_version, start_replicas

N = 3000


@pytest.fixture(scope="session")
def glove_v1(tmp_path_factory: pytest.TempPathFactory) -> Version:
    return build_version(tmp_path_factory.mktemp("rel-v1"), "v1", fx.glove(N))


@pytest.fixture(scope="session")
def glove_v2(tmp_path_factory: pytest.TempPathFactory) -> Version:
    """Another version: 1,000 more GloVe words, so many answers differ from v1's."""
    return build_version(tmp_path_factory.mktemp("rel-v2"), "v2", fx.glove(N + 1000))


@pytest.fixture
def live_cluster(glove_v1: Version, bucket: str, tmp_path: Path
                 ) -> Iterator[tuple[list[list[ShardProcess]], str]]:
    """2 shards x 2 replicas of glove_v1 following a write-ahead log on the moto bucket."""
    wal = f"s3://{bucket}/wal"
    replicas = start_replicas(lambda s: ShardProcess(
        s, ["--index", glove_v1.root], tmp_path, ["--wal", wal, "--wal-interval", "0.2"]))
    try:
        yield replicas, wal
    finally:
        for row in replicas:
            for r in row:
                r.stop()
