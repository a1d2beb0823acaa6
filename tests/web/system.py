"""The whole system for the web tests, all real: a moto S3 bucket of real photos (one under a
key full of HTML), the backfill (sequential engine) and the index build into S3, two shard
servers, an in-process coordinator with the real default model, and ``web`` under uvicorn."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

from cbir import storage
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.query_embedder import load_query_embedder
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from demo.photos import Photo, encode_jpeg
from demo.processes import free_port
from jobs.build_index.build import BuildConfig, build_index
from jobs.embed.job import JobOptions, build_config, run_backfill
from jobs.engines import EngineOptions
from shard_server.index_store import Expectations
from shard_server.searcher import SearcherConfig
from shard_server.server import ServerConfig, ThreadedServer
from tests.coordinator.harness import LoopThread
from web.app import create_app
from web.cli import bind
from web.config import WebConfig

SHARDS = 2
# Distinct real photos (motorcycle_right is left out: a near copy of motorcycle_left).
NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "horse",
         "motorcycle_left", "page", "rocket")
HTML_NAME = "rocket"  # stored under a key that is an HTML injection attempt
HTML_KEY = 'photos/<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>.jpg'


@dataclass
class System:
    bucket: str
    keys: dict[str, str]  # photo name -> s3:// URI
    coordinator: str
    web: WebThread
    loop: LoopThread
    shard_addresses: tuple[str, ...]
    photos: dict[str, Photo] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.web.url


class WebThread:
    """``web.app`` under uvicorn on its own thread, on a free 127.0.0.1 port."""

    def __init__(self, config: WebConfig) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_config=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="cbir-web")

    def start(self) -> WebThread:
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "web server did not start"
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def seed(photos: list[Photo]) -> tuple[str, dict[str, str], dict[str, Photo]]:
    bucket = f"web-{uuid.uuid4().hex[:10]}"
    client = storage.s3_client()
    client.create_bucket(Bucket=bucket)
    chosen = {p.name: p for p in photos if p.name in NAMES}
    keys: dict[str, str] = {}
    for name, photo in chosen.items():
        key = HTML_KEY if name == HTML_NAME else f"photos/{name}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=encode_jpeg(photo.pixels))
        keys[name] = f"s3://{bucket}/{key}"
    client.put_object(Bucket=bucket, Key="secret/not-indexed.jpg",
                      Body=encode_jpeg(chosen["coffee"].pixels))
    return bucket, keys, chosen


def build(bucket: str, count: int) -> str:
    """Backfill + index build, both into S3; the index version's root."""
    embeddings, index = f"s3://{bucket}/data/embeddings", f"s3://{bucket}/data/indexes/v1"
    config = build_config(JobOptions(input=f"s3://{bucket}/photos", output=embeddings,
                                     num_shards=SHARDS))
    manifest = run_backfill(config, EngineOptions("sequential"), show_progress=False)
    assert manifest.num_images == count, manifest
    assert build_index(BuildConfig(embeddings, index, SHARDS, "Flat", tune_queries=5))
    return index


async def _coordinator(config: CoordinatorConfig, topology: StaticTopology) -> CoordinatorServer:
    embedder = load_query_embedder("efficientnet_lite0", None, "cpu")
    server = CoordinatorServer(config, topology, lambda: embedder)
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 120)
    return server


@contextmanager
def running_system(photos: list[Photo], **web_options: object) -> Iterator[System]:
    bucket, keys, chosen = seed(photos)
    index = build(bucket, len(keys))
    shards = [ThreadedServer(ServerConfig(
        index_uri=index, port=0, drain_s=0.0,
        searcher=SearcherConfig(shard=s, expect=Expectations()))).start()
        for s in range(SHARDS)]
    loop = LoopThread()
    topology = StaticTopology({s: (f"127.0.0.1:{srv.port}",) for s, srv in enumerate(shards)})
    coordinator = loop.run(_coordinator(
        CoordinatorConfig(num_shards=SHARDS, port=0, version_interval_s=0.5), topology), 180)
    address = f"127.0.0.1:{coordinator.port}"
    web = WebThread(WebConfig(coordinator=address, **web_options)).start()  # type: ignore[arg-type]
    try:
        yield System(bucket, keys, address, web, loop,
                     tuple(f"127.0.0.1:{srv.port}" for srv in shards), chosen)
    finally:
        web.close()
        loop.run(coordinator.stop(0))
        loop.close()
        for srv in shards:
            srv.stop()


@contextmanager
def web_missing_shard_1(system: System) -> Iterator[str]:
    """A second coordinator (vector and id queries) whose shard 1 has no live replica, and a
    web app over it: every answer is partial. Yields the web URL."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    topology = StaticTopology({0: (system.shard_addresses[0],), 1: (dead,)})
    config = CoordinatorConfig(num_shards=SHARDS, port=0, image_queries=False,
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
