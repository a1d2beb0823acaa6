"""Live-index ingest through real servers: the ``cbir upsert`` / ``cbir delete`` CLI (images
uploaded by the CLI and fetched by the coordinator from moto S3) and ``cbir watch`` fed by real
moto S3 bucket notifications through SQS. The coordinator's embedder is a small deterministic
fake here (the served GloVe index has dim 50, no image model); ``--json`` output and exit codes
are the CLI's contract."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import boto3
import numpy as np
import pytest

from cbir import storage
from cbir.cli import main
from cbir.client import CoordinatorClient
from cbir.errors import BadImage
from cbir.ids import image_id
from cbir.schema import IndexManifest, read_manifest
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from tests.reliability.cluster import ROOT, Coordinator, ShardProcess, Version, start_replicas
from tests.reliability.test_live_index import eventually

DIM = 50


class HashEmbedder:
    """Deterministic unit vectors from the image bytes; b"bad..." is not an image."""

    name = "hash"
    dim = DIM

    def __init__(self, version: str) -> None:
        self.version = version

    def embed_batch(self, images: Sequence[bytes]) -> list[np.ndarray | BadImage]:
        return [BadImage("undecodable", "not an image") if image.startswith(b"bad")
                else embedding(image) for image in images]


def embedding(image: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(image).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class EmbeddingCoordinator(Coordinator):
    version = ""

    async def _make(self, config: CoordinatorConfig, topology: StaticTopology
                    ) -> CoordinatorServer:
        version = self.version
        return CoordinatorServer(replace(config, image_queries=True), topology,
                                 embedder_factory=lambda: HashEmbedder(version))


@pytest.fixture
def live(glove_v1: Version, bucket: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    wal = f"s3://{bucket}/wal"
    replicas = start_replicas(lambda s: ShardProcess(
        s, ["--index", glove_v1.root], tmp_path, ["--wal", wal, "--wal-interval", "0.2"]))
    EmbeddingCoordinator.version = read_manifest(
        storage.join(glove_v1.root, "manifest.json"), IndexManifest).model_version
    coordinator = EmbeddingCoordinator(replicas, wal=wal)
    try:
        yield f"127.0.0.1:{coordinator.port}", bucket
    finally:
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, str]]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)["items"] if out.strip() else []


def top_key(client: CoordinatorClient, image: bytes) -> str:
    hits = client.search_vector(embedding(image), k=1).hits
    return hits[0].key if hits else ""


def test_cli_upsert_and_delete(live: tuple[str, str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    address, bucket = live
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"photo-1")
    key = f"s3://{bucket}/up/photo.jpg"
    code, items = cli_json(capsys, "upsert", "--coordinator", address, "--json",
                           "--image", str(photo), "--key", key)
    assert code == 0 and items[0]["status"] == "ok"
    assert items[0]["image_id_str"] == str(image_id(key)) == str(items[0]["image_id"])
    s3 = storage.s3_client()
    s3.put_object(Bucket=bucket, Key="up/fetched.jpg", Body=b"photo-2")
    s3.put_object(Bucket=bucket, Key="up/broken.jpg", Body=b"bad bytes")
    fetched, broken = f"s3://{bucket}/up/fetched.jpg", f"s3://{bucket}/up/broken.jpg"
    code, items = cli_json(capsys, "upsert", "--coordinator", address, "--json", fetched,
                           broken, f"s3://{bucket}/up/missing.jpg")
    assert code == 1  # some item failed; each says why
    assert [i["status"] for i in items] == ["ok", "error", "error"]
    assert "undecodable" in items[1]["reason"] and items[2]["reason"]
    with CoordinatorClient(address) as client:
        eventually(lambda: top_key(client, b"photo-1") == key
                   and top_key(client, b"photo-2") == fetched)
        # `--image-id ID...` (the documented form) takes several ids after one flag; a delete by
        # key answers with that key, one by id with its id.
        code, items = cli_json(capsys, "delete", "--coordinator", address, "--json", key,
                               "--image-id", str(image_id(fetched)), str(image_id(fetched)))
        assert code == 0 and [i["status"] for i in items] == ["ok", "ok", "ok"]
        assert [(i["key"], i["image_id"]) for i in items] == [
            (key, image_id(key)), ("", image_id(fetched)), ("", image_id(fetched))]
        eventually(lambda: top_key(client, b"photo-1") != key
                   and top_key(client, b"photo-2") != fetched)


def test_cli_bad_usage_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upsert", "--coordinator", "127.0.0.1:1", "--image", "x.jpg"]) == 2
    assert main(["delete", "--coordinator", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--key" in err[0] and "--image-id" in err[1]


def test_watch_turns_bucket_notifications_into_live_writes(live: tuple[str, str]) -> None:
    address, bucket = live
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"w-{bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    s3 = storage.s3_client()
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": arn["Attributes"]["QueueArn"],
            "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
            # The write-ahead log lives in this bucket too: only the photos' prefix is watched.
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "drop/"}]}}}]})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    watcher = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cbir.cli import main; sys.exit(main())",
         "watch", "--queue", queue, "--coordinator", address, "--wait-seconds", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        s3.put_object(Bucket=bucket, Key="drop/new photo.jpg", Body=b"photo-w1")
        s3.put_object(Bucket=bucket, Key="drop/gone.jpg", Body=b"photo-w2")
        new, gone = f"s3://{bucket}/drop/new photo.jpg", f"s3://{bucket}/drop/gone.jpg"
        with CoordinatorClient(address) as client:
            eventually(lambda: top_key(client, b"photo-w1") == new
                       and top_key(client, b"photo-w2") == gone, timeout_s=30)
            s3.delete_object(Bucket=bucket, Key="drop/gone.jpg")
            eventually(lambda: top_key(client, b"photo-w2") != gone, timeout_s=30)
            assert top_key(client, b"photo-w1") == new
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "stopped:" in out and "upserts=2" in out and "deletes=1" in out
