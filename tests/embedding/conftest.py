from __future__ import annotations

import pytest

from cbir.embedding import Embedder, load_embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder("efficientnet_lite0", device="cpu")
