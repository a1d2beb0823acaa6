"""Running the real system for a benchmark: an embeddings run of benchmark vectors in the
backfill's format, the ``cbir`` CLIs as child processes (build-index, serve-shard,
serve-coordinator) on 127.0.0.1, and thin async clients for the Shard and Coordinator services.
Every server is a separate process, as in production: a benchmark measures the wire, not calls
inside one interpreter."""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import storage
from cbir.ids import image_id, shards_of
from cbir.schema import EMBED_MANIFEST, EmbedManifest, embeddings_schema, write_manifest
from demo.processes import ChildProcesses, cbir_command, free_port

BENCH_MODEL = "glove-6b-50d"
BENCH_MODEL_VERSION = "glove-6b-50d-v1"
STARTUP_TIMEOUT_S = 180.0
SHARD_SERVICE = "cbir.v1.Shard"
COORDINATOR_SERVICE = "cbir.v1.Coordinator"


# ---------------------------------------------------------------------------- data


def write_embeddings_run(
    uri: str, vectors: np.ndarray, name: str = "glove", parts: int = 4,
    model: str = BENCH_MODEL, model_version: str = BENCH_MODEL_VERSION,
) -> np.ndarray:
    """Write ``vectors`` as a finished embeddings run (Parquet parts + ``_MANIFEST.json``);
    returns the image id of each row (hash of a made-up ``s3://`` key, as the backfill does)."""
    n, dim = vectors.shape
    keys = [f"s3://bench-{name}/{i:07d}" for i in range(n)]
    ids = np.array([image_id(k) for k in keys], dtype=np.int64)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    table = pa.Table.from_arrays(
        [pa.array(ids), pa.array(keys, pa.string()), pa.array(shards_of(ids, 1)),
         pa.FixedSizeListArray.from_arrays(flat, dim),
         pa.nulls(n, pa.int32()), pa.nulls(n, pa.int32()), pa.nulls(n, pa.int64())],
        schema=embeddings_schema(dim, model, model_version),
    )
    step = -(-n // parts)
    names = []
    for p in range(parts):
        sink = io.BytesIO()
        pq.write_table(table.slice(p * step, step), sink)
        names.append(f"part-{p:05d}.parquet")
        storage.write_bytes(storage.join(uri, names[-1]), sink.getvalue())
    write_manifest(storage.join(uri, EMBED_MANIFEST), EmbedManifest(
        model=model, model_version=model_version, dim=dim, num_images=n, num_errors=0,
        input=f"s3://bench-{name}/", parts=names))
    return ids


# ---------------------------------------------------------------------------- processes


def run_cbir(*argv: str, timeout_s: float = 600.0) -> tuple[float, str]:
    """Run one ``cbir`` command to completion; (wall seconds, stdout). Raises with its stderr."""
    started = time.perf_counter()
    proc = subprocess.run(cbir_command(*argv), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"cbir {argv[0]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return round(wall, 3), proc.stdout


class Processes(ChildProcesses):
    """Benchmark servers: logs in a fresh temp dir, the benchmarks' start-up timeout."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="bench-logs-")))

    def wait_serving(self, address: str, service: str, timeout_s: float = STARTUP_TIMEOUT_S
                     ) -> None:
        super().wait_serving(address, service, timeout_s)


def start_shard(procs: Processes, index: str, shard: int, name: str) -> str:
    address = f"127.0.0.1:{free_port()}"
    procs.start(name, cbir_command("serve-shard", "--index", index, "--shard", str(shard),
                                   "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]))
    return address


def write_topology(path: Path, topology: dict[int, list[str]]) -> str:
    path.write_text(json.dumps({"shards": {str(s): a for s, a in topology.items()}}))
    return str(path)


def start_coordinator(procs: Processes, topology_file: str, name: str,
                      command: Sequence[str] | None = None, answer_cache: bool = False) -> str:
    """``cbir serve-coordinator`` (or ``command``, which takes the same flags) for vectors.
    The answer cache is off unless asked for: benchmarks repeat their queries, and a cached
    answer would measure the cache, not the search path."""
    address = f"127.0.0.1:{free_port()}"
    base = list(command) if command is not None else cbir_command("serve-coordinator")
    cache = [] if answer_cache else ["--result-cache-bytes", "0"]
    procs.start(name, [*base, "--topology", topology_file, "--host", "127.0.0.1",
                       "--port", address.rsplit(":", 1)[1], "--no-image-queries", *cache])
    return address


# ---------------------------------------------------------------------------- clients


class ShardSearchClient:
    """Raw ``cbir.v1.Shard/Search`` calls (one query each), for benchmark (b)."""

    def __init__(self, address: str, k: int) -> None:
        import grpc

        from cbir.rpc.serving import channel_options
        from protos import cbir_pb2_grpc

        self._channel = grpc.aio.insecure_channel(address, options=channel_options())
        self._stub = cbir_pb2_grpc.ShardStub(self._channel)
        self._k = k

    async def search(self, query: np.ndarray) -> np.ndarray:
        return (await self.search_batch(query.reshape(1, -1)))[0]

    async def search_batch(self, queries: np.ndarray) -> np.ndarray:
        """One Search request carrying every row of ``queries``: (B, dim) -> (B, k) ids."""
        from protos import cbir_pb2

        q = np.ascontiguousarray(queries, dtype="<f4")
        reply = await self._stub.Search(
            cbir_pb2.ShardSearchRequest(vectors=q.tobytes(), dim=q.shape[-1], k=self._k),
            timeout=10.0,
        )
        return np.frombuffer(reply.ids, dtype="<i8").reshape(len(q), self._k)

    async def close(self) -> None:
        await self._channel.close()


class CoordinatorSearchClient:
    """``cbir.client.AsyncCoordinatorClient`` by vector, answers as an id array."""

    def __init__(self, address: str, k: int) -> None:
        from cbir.client import AsyncCoordinatorClient

        self._client = AsyncCoordinatorClient(address)
        self._k = k
        self.partial = 0

    async def search(self, query: np.ndarray) -> np.ndarray:
        result = await self._client.search_vector(query, k=self._k)
        self.partial += int(result.partial)
        return np.array([h.image_id for h in result.hits], dtype=np.int64)

    async def close(self) -> None:
        await self._client.close()
