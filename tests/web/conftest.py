from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo.photos import Photo
from tests.web.system import System, running_system


@pytest.fixture(scope="package")
def system(s3_endpoint: str, photos: list[Photo]) -> Iterator[System]:
    with running_system(photos) as running:
        yield running
