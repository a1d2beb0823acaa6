"""A shard with no live replica: the API says so (partial + failed shards) instead of failing,
and /api/info names the shard."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cbir.ids import image_id
from tests.coordinator.harness import wait_for
from tests.web.system import System, web_missing_shard_1

pytestmark = pytest.mark.slow


@pytest.fixture
def half_web(system: System) -> Iterator[str]:
    with web_missing_shard_1(system) as url:
        yield url


def test_a_partial_answer_names_the_missing_shard(half_web: str, system: System) -> None:
    on_shard0 = next(k for k in system.keys.values() if image_id(k) % 2 == 0)
    reply = httpx.post(f"{half_web}/api/search",
                       json={"image_id": str(image_id(on_shard0)), "k": 5}, timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["partial"] is True and answer["failed_shards"] == [1]
    assert answer["hits"][0]["key"] == on_shard0
    assert all(h["shard"] == 0 for h in answer["hits"])
    def info() -> dict[str, object]:
        return dict(httpx.get(f"{half_web}/api/info").json())

    assert wait_for(lambda: info()["shards_without_replicas"] == [1]), info()
    assert info()["live_replicas"] == {"0": 1, "1": 0}
    metrics = httpx.get(f"{half_web}/metrics").text
    assert "cbir_web_partial_answers_total 1.0" in metrics
