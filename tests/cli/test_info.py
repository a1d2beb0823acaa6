"""`cbir info` on what the real jobs wrote to a real S3 endpoint (moto): an embeddings run with
bad objects, an index version and a pointer to it; and on a live coordinator (real gRPC),
whose QPS is measured while queries run."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from cbir import storage
from cbir.cli import main
from cbir.client import CoordinatorClient
from demo.photos import bundled_photos
from tests.coordinator.harness import Cluster, LoopThread, start_cluster
from tests.embedding import odd_images as odd


@dataclass(frozen=True)
class Stored:
    embeddings: str
    index: str
    pointer: str
    bad: int


def info_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["info", "--json", *argv]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report, dict)
    return report


@pytest.fixture(scope="module")
def stored(s3_endpoint: str) -> Stored:
    """Four photos and two bad objects, embedded and indexed by the real CLI commands."""
    bucket = f"info-{uuid.uuid4().hex[:10]}"
    s3 = storage.s3_client()
    s3.create_bucket(Bucket=bucket)
    photos = {p.name: p for p in bundled_photos()}
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        image = odd.small(photos[name].pixels, 160)
        s3.put_object(Bucket=bucket, Key=f"img/{name}.jpg", Body=odd.save(image, "JPEG"))
    s3.put_object(Bucket=bucket, Key="img/notes.jpg", Body=b"not an image at all")
    s3.put_object(Bucket=bucket, Key="img/empty.jpg", Body=b"")
    emb, index = f"s3://{bucket}/emb", f"s3://{bucket}/indexes/v1"
    pointer = f"s3://{bucket}/indexes/CURRENT"
    assert main(["backfill", "--input", f"s3://{bucket}/img/", "--output", emb,
                 "--engine", "sequential", "--device", "cpu", "--num-shards", "2",
                 "--no-progress"]) == 0
    assert main(["build-index", "--embeddings", emb, "--output", index, "--shards", "2",
                 "--engine", "sequential"]) == 0
    assert main(["index-pointer", "set", pointer, "--to", index]) == 0
    return Stored(emb, index, pointer, bad=2)


def test_info_on_an_embeddings_run(stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
    report = info_json(capsys, stored.embeddings)
    assert report["kind"] == "embeddings"
    assert (report["images"], report["errors"], report["dim"]) == (4, 2, 1280)
    assert report["model"] == "efficientnet_lite0"
    by_reason = report["errors_by_reason"]
    assert isinstance(by_reason, dict) and sum(by_reason.values()) == stored.bad
    assert isinstance(report["bytes"], int) and report["bytes"] > 4 * 1280  # parts + errors


def test_info_on_an_index_and_its_pointer(stored: Stored,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    report = info_json(capsys, stored.index)
    assert (report["kind"], report["count"], report["dim"]) == ("index", 4, 1280)
    shards = report["shards"]
    assert isinstance(shards, list) and [s["shard"] for s in shards] == [0, 1]
    assert sum(s["count"] for s in shards) == 4 and all(s["bytes"] > 0 for s in shards)
    assert report["embeddings"] == stored.embeddings
    pointed = info_json(capsys, stored.pointer)
    assert (pointed["kind"], pointed["target"]) == ("pointer", stored.index)
    assert pointed["index"] == report
    # The text form names the same facts.
    assert main(["info", stored.index]) == 0
    text = capsys.readouterr().out
    assert "index_version:" in text and "shard=1" in text and "count:            4" in text


def test_info_on_something_else_is_one_line_exit_2(
        stored: Stored, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", stored.embeddings + "/nothing-here"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cbir info: error: nothing at {stored.embeddings}/nothing-here"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    loop = LoopThread()
    c = start_cluster(loop, num_shards=2, replicas=2)
    yield c
    c.close()
    loop.close()


def test_info_on_a_live_cluster(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    query = np.asarray(cluster.data.vectors[0], dtype=np.float32)

    def load() -> None:
        with CoordinatorClient(cluster.address) as client:
            while not stop.is_set():
                client.search_vector(query, k=3)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        report = info_json(capsys, "--coordinator", cluster.address, "--sample-seconds", "1")
    finally:
        stop.set()
        worker.join()
    assert report["kind"] == "cluster"
    assert report["count"] == len(cluster.data.ids)
    shards = report["shards"]
    assert isinstance(shards, list)
    assert [(s["shard"], s["replicas"], s["live_replicas"]) for s in shards] == [
        (0, 2, 2), (1, 2, 2)]
    assert all(s["index_version"] == "v1" for s in shards)
    assert isinstance(report["qps"], float) and report["qps"] > 0
