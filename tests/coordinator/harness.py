"""Test harness: an asyncio loop in a thread, fake shard replicas (real grpc.aio servers on
127.0.0.1 backed by numpy brute force) and a coordinator over them."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dns.message
import dns.rcode
import dns.rrset
import grpc
import numpy as np

from cbir.client import SearchResult
from cbir.errors import BadImage
from cbir.rpc.serving import Serving
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from protos import cbir_pb2, cbir_pb2_grpc

T = TypeVar("T")
DIM = 16


class LoopThread:
    """Servers run here so tests can use the synchronous client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class ShardData:
    ids: np.ndarray
    vectors: np.ndarray
    keys: list[str]


def make_dataset(n: int = 240, dim: int = DIM, seed: int = 7) -> ShardData:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    return ShardData(ids, vectors, [f"s3://photos/img{i:04d}.jpg" for i in range(n)])


def split(data: ShardData, num_shards: int) -> list[ShardData]:
    out = []
    for s in range(num_shards):
        mask = data.ids % num_shards == s
        out.append(ShardData(data.ids[mask], data.vectors[mask],
                             [k for k, m in zip(data.keys, mask, strict=True) if m]))
    return out


def ids(result: SearchResult) -> list[int]:
    return [h.image_id for h in result.hits]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout_s`` passes (False)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def flat_top_k(data: ShardData, query: np.ndarray, k: int, metric: str = "ip") -> list[int]:
    """Exact answer of one unsharded index, ties by id."""
    if metric == "ip":
        scores = data.vectors @ query
        order = np.lexsort((data.ids, -scores))
    else:
        scores = ((data.vectors - query) ** 2).sum(axis=1)
        order = np.lexsort((data.ids, scores))
    return [int(data.ids[i]) for i in order[:k]]


@dataclass
class FakeShardServicer(cbir_pb2_grpc.ShardServicer):
    shard: int
    num_shards: int
    data: ShardData
    metric: str = "ip"
    index_version: str = "v1"
    model_version: str = "fake-1"
    delay_s: float = 0.0
    searches: int = 0
    pinned: list[str] = field(default_factory=list)
    time_remaining: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # queries per Search call (batching)

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.searches += 1
        self.rows.append(len(request.vectors) // (4 * max(1, request.dim)))
        self.time_remaining.append(context.time_remaining() or float("inf"))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.index_version:
            self.pinned.append(request.index_version)
            if request.index_version != self.index_version:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "version not held")
        dim = self.data.vectors.shape[1]
        if request.dim != dim:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "wrong dim")
        q = np.frombuffer(request.vectors, dtype="<f4").reshape(-1, dim)
        k = request.k
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.zeros((len(q), k), dtype=np.float32)
        keys = [""] * (len(q) * k)
        for row, vec in enumerate(q):
            top = flat_top_k(self.data, vec, k, self.metric)
            pos = {int(i): j for j, i in enumerate(self.data.ids)}
            for col, image_id in enumerate(top):
                j = pos[image_id]
                v = self.data.vectors[j]
                ids[row, col] = image_id
                scores[row, col] = float(v @ vec) if self.metric == "ip" else float(
                    ((v - vec) ** 2).sum())
                keys[row * k + col] = self.data.keys[j]
        return cbir_pb2.ShardSearchResponse(
            shard=self.shard, num_queries=len(q), k=k, ids=ids.astype("<i8").tobytes(),
            scores=scores.astype("<f4").tobytes(), keys=keys,
            index_version=self.index_version, metric=self.metric,
        )

    async def GetVectors(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        pos = {int(i): j for j, i in enumerate(self.data.ids)}
        found = [i for i in request.image_ids if i in pos]
        vectors = np.stack([self.data.vectors[pos[i]] for i in found]) if found else np.zeros(0)
        return cbir_pb2.GetVectorsResponse(
            dim=self.data.vectors.shape[1], image_ids=found,
            vectors=vectors.astype("<f4").tobytes(),
            keys=[self.data.keys[pos[i]] for i in found],
            missing_ids=[i for i in request.image_ids if i not in pos],
        )

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return cbir_pb2.StatsResponse(
            shard=self.shard, num_shards=self.num_shards, count=len(self.data.ids),
            dim=self.data.vectors.shape[1],
            metric=self.metric, factory="Flat", index_version=self.index_version,
            model="fake", model_version=self.model_version,
        )


class FakeReplica:
    """One replica: a real gRPC server with health; can be stopped and restarted on its port."""

    def __init__(self, servicer: FakeShardServicer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.servicer = servicer
        self.host = host
        self.port = port
        self.serving: Serving | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> str:
        self.serving = Serving(["cbir.v1.Shard"])
        cbir_pb2_grpc.add_ShardServicer_to_server(self.servicer, self.serving.server)
        self.port = self.serving.bind(self.host, self.port)
        await self.serving.start()
        await self.serving.set_serving(True)
        return self.address

    async def stop(self, grace_s: float | None = None) -> None:
        if self.serving is not None:
            await self.serving.server.stop(grace_s)
            self.serving = None


class FakeEmbedder:
    """Accepts bytes with a PNG/JPEG signature; the vector is a hash of the bytes."""

    name = "fake"
    dim = DIM

    def __init__(self, version: str = "fake-1") -> None:
        self.version = version
        self.calls = 0

    def embed_batch(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        self.calls += 1
        out: list[np.ndarray | BadImage] = []
        for image in images:
            try:
                out.append(self.embed(image))
            except BadImage as exc:
                out.append(exc)
        return out

    def embed(self, image: bytes) -> np.ndarray:
        if not image.startswith((b"\x89PNG", b"\xff\xd8\xff")):
            raise BadImage("not_an_image", "cannot identify image file")
        seed = int.from_bytes(hashlib.sha256(image).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return vec / np.linalg.norm(vec)


@dataclass
class Cluster:
    loop: LoopThread
    data: ShardData
    replicas: list[list[FakeReplica]]
    coordinator: CoordinatorServer
    embedder: FakeEmbedder

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    def stop_replica(self, shard: int, index: int, grace_s: float | None = 0) -> None:
        self.loop.run(self.replicas[shard][index].stop(grace_s))

    def start_replica(self, shard: int, index: int) -> None:
        self.loop.run(self.replicas[shard][index].start())

    def close(self) -> None:
        self.loop.run(self.coordinator.stop(0))
        for shard in self.replicas:
            for r in shard:
                self.loop.run(r.stop(0))


def start_cluster(
    loop: LoopThread,
    num_shards: int = 2,
    replicas: int = 2,
    hedge_after_ms: float | None = None,
    embedder: FakeEmbedder | None = None,
    reprobe_interval_s: float = 0.2,
    balancer_policy: str = "p2c",
    versions: Sequence[str] | None = None,
    data: ShardData | None = None,
    embedder_factory: Callable[[], Any] | None = None,
    model_version: str = "fake-1",
    **config: Any,
) -> Cluster:
    data = data if data is not None else make_dataset()
    parts = split(data, num_shards)
    reps = [
        [FakeReplica(FakeShardServicer(s, num_shards, parts[s],
                                       index_version=(versions[s] if versions else "v1"),
                                       model_version=model_version))
         for _ in range(replicas)]
        for s in range(num_shards)
    ]
    for shard in reps:
        for r in shard:
            loop.run(r.start())
    topology = {s: tuple(r.address for r in shard) for s, shard in enumerate(reps)}
    cfg = CoordinatorConfig(
        num_shards=num_shards, port=0, hedge_after_ms=hedge_after_ms,
        balancer=BalancerConfig(reprobe_interval_s=reprobe_interval_s,
                                policy=balancer_policy),
        resolve_interval_s=0.5,
        **config,
    )
    emb = embedder or FakeEmbedder()

    async def start() -> CoordinatorServer:
        factory = embedder_factory or (lambda: emb)
        server = CoordinatorServer(cfg, StaticTopology(topology), factory)
        await server.start()
        await asyncio.wait_for(server.ready.wait(), 60)
        return server

    return Cluster(loop, data, reps, loop.run(start()), emb)


class TinyDnsServer:
    """A real UDP DNS server on 127.0.0.1 answering A queries from a dict (dnspython wire)."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            name = query.question[0].name.to_text().rstrip(".")
            if name in self.records:
                reply.answer.append(dns.rrset.from_text_list(
                    query.question[0].name, 5, "IN", "A", self.records[name]))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()
