"""A shard with no live replica: the API says so (partial + failed shards) instead of failing,
and /api/info names the shard."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from cbir.ids import image_id
from cbir.processes import free_port
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from tests.coordinator.harness import wait_for
from tests.web.system import System, WebThread
from web.config import WebConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def half_web(system: System) -> Iterator[str]:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here: shard 1 has no live replica
    topology = StaticTopology({0: (system.shard_addresses[0],), 1: (dead,)})
    config = CoordinatorConfig(num_shards=2, port=0, image_queries=False,
                               balancer=BalancerConfig(reprobe_interval_s=0.2,
                                                       eject_after_failures=1))

    async def start() -> CoordinatorServer:
        server = CoordinatorServer(config, topology, None)
        await server.start()
        await asyncio.wait_for(server.ready.wait(), 30)
        return server

    coordinator = system.loop.run(start())
    web = WebThread(WebConfig(coordinator=f"127.0.0.1:{coordinator.port}")).start()
    try:
        yield web.url
    finally:
        web.close()
        system.loop.run(coordinator.stop(0))


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
