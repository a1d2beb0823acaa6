"""Shared fixtures: index versions built once per session by the real build."""

from __future__ import annotations

import pytest

from tests.build_index import fixtures as fx
from tests.reliability.cluster import Version, build_version

N = 3000


@pytest.fixture(scope="session")
def glove_v1(tmp_path_factory: pytest.TempPathFactory) -> Version:
    return build_version(tmp_path_factory.mktemp("rel-v1"), "v1", fx.glove(N))


@pytest.fixture(scope="session")
def glove_v2(tmp_path_factory: pytest.TempPathFactory) -> Version:
    """Another version: 1,000 more GloVe words, so many answers differ from v1's."""
    return build_version(tmp_path_factory.mktemp("rel-v2"), "v2", fx.glove(N + 1000))
