"""``cbir demo``: the whole system on one machine, through the same CLIs a user runs.

A local S3 endpoint (moto's HTTP server) is seeded with real photos that ship inside installed
packages (plus a few broken objects); the Spark backfill embeds them with the offline default
model; the index build makes one Faiss index per shard; shard servers (several replicas each) and
a coordinator start on 127.0.0.1; edited copies of the photos are sent as queries and the results
printed; a photo held back from the backfill is then uploaded and upserted live (and deleted).
Then it keeps serving until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cbir import storage
from demo.live import live_update
from demo.photos import Photo, bundled_photos, edited_copies, encode_jpeg
from demo.processes import ChildProcesses, cbir_command, free_port

log = logging.getLogger(__name__)

PHOTO_BUCKET = "cbir-demo-photos"
DATA_BUCKET = "cbir-demo-data"
WAL = f"s3://{DATA_BUCKET}/wal"  # the live index's write-ahead log
BROKEN_OBJECTS = {
    "photos/broken/empty.jpg": b"",
    "photos/broken/not-an-image.jpg": b"this is a text file, not a JPEG\n",
}


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    shards: int
    replicas: int
    k: int
    master: str
    serve: bool
    startup_timeout_s: float = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default="cbir-demo", help="logs and topology (default: %(default)s)"
    )
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2, help="replicas per shard")
    parser.add_argument("--k", type=int, default=3, help="hits shown per query")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    parser.add_argument(
        "--no-serve", dest="serve", action="store_false",
        help="stop after the queries instead of serving until Ctrl-C",
    )


def run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        workdir=Path(args.workdir).absolute(), shards=args.shards, replicas=args.replicas,
        k=args.k, master=args.master, serve=args.serve,
    )
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with local_s3() as endpoint, ChildProcesses(cfg.workdir / "logs") as procs:
        say(f"local S3 endpoint: {endpoint}")
        # The last photo is held back: the live-index step uploads it while serving.
        *photos, held_back = bundled_photos()
        seed_bucket(photos)
        embeddings, index = f"s3://{DATA_BUCKET}/embeddings", f"s3://{DATA_BUCKET}/indexes/v1"
        run_cli("backfill", "--input", f"s3://{PHOTO_BUCKET}/photos", "--output", embeddings,
                "--master", cfg.master, "--num-shards", str(cfg.shards))
        show_skipped(embeddings)
        run_cli("build-index", "--embeddings", embeddings, "--output", index,
                "--shards", str(cfg.shards), "--engine", "spark", "--master", cfg.master)
        coordinator = start_cluster(cfg, procs, index)
        accuracy = query_edited_photos(coordinator, photos, cfg.k)
        say(f"top-1 = original for {accuracy:.1%} of edited-photo queries")
        query_by_id(coordinator, photos[0], cfg.k)
        live_update(coordinator, held_back, PHOTO_BUCKET, say)
        example = cfg.workdir / f"{photos[0].name}-crop.jpg"
        example.write_bytes(dict(edited_copies(photos[0]))["crop"])
        if cfg.serve:
            say(f"web page and HTTP/JSON API: {start_web(cfg, procs, coordinator)}")
            say(f"coordinator serving on {coordinator}; try in another shell:\n"
                f"  .venv/bin/cbir query --coordinator {coordinator} {example}\n"
                f"  .venv/bin/cbir query --coordinator {coordinator} {example} --json\n"
                "Press Ctrl-C to stop.")
            wait_until_a_child_exits(procs)
    return 0


def say(message: str) -> None:
    print(f"[cbir demo] {message}", flush=True)


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """moto's real S3 HTTP server on 127.0.0.1; children inherit AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Dummy credentials for the local endpoint only; real runs use the standard AWS chain.
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1",
    })
    try:
        yield endpoint
    finally:
        server.stop()


def seed_bucket(photos: list[Photo]) -> None:
    client = storage.s3_client()
    for bucket in (PHOTO_BUCKET, DATA_BUCKET):
        client.create_bucket(Bucket=bucket)
    for photo in photos:
        client.put_object(Bucket=PHOTO_BUCKET, Key=f"photos/{photo.name}.jpg",
                          Body=encode_jpeg(photo.pixels))
    for key, body in BROKEN_OBJECTS.items():
        client.put_object(Bucket=PHOTO_BUCKET, Key=key, Body=body)
    say(f"seeded s3://{PHOTO_BUCKET}/photos with {len(photos)} real photos "
        f"and {len(BROKEN_OBJECTS)} broken objects")


def run_cli(*argv: str) -> None:
    say("$ cbir " + " ".join(argv))
    started = time.monotonic()
    # No -v: the jobs print their progress and a one-line summary; Spark's own INFO lines would
    # bury them (run the printed command with -v to see those).
    subprocess.run(cbir_command(*argv), check=True)
    say(f"{argv[0]} finished in {time.monotonic() - started:.1f}s")


def show_skipped(embeddings: str) -> None:
    """The backfill's errors table: what was skipped and why (nothing is silently dropped)."""
    import pyarrow.dataset as ds

    fs, path = storage.filesystem(storage.join(embeddings, "_errors"))
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=["key", "reason"])
    for row in table.to_pylist():
        say(f"  skipped {row['key']}: {row['reason']}")


def query_by_id(coordinator: str, photo: Photo, k: int) -> None:
    from cbir.client import CoordinatorClient
    from cbir.ids import image_id

    key = f"s3://{PHOTO_BUCKET}/photos/{photo.name}.jpg"
    with CoordinatorClient(coordinator) as client:
        result = client.search_id(image_id(key), k=k, exclude_query_image=True)
    shown = "  ".join(f"{h.key.rsplit('/', 1)[-1]} {h.score:.3f}" for h in result.hits)
    say(f"query by image id {image_id(key)} ({photo.name}.jpg, itself excluded) -> {shown}")


def start_cluster(cfg: DemoConfig, procs: ChildProcesses, index: str) -> str:
    topology: dict[str, list[str]] = {}
    for shard in range(cfg.shards):
        for replica in range(cfg.replicas):
            address = f"127.0.0.1:{free_port()}"
            topology.setdefault(str(shard), []).append(address)
            procs.start(f"shard{shard}-replica{replica}", cbir_command(
                "-v", "serve-shard", "--index", index, "--shard", str(shard),
                "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--wal", WAL))
    topology_file = cfg.workdir / "topology.json"
    topology_file.write_text(json.dumps({"shards": topology}, indent=2))
    coordinator = f"127.0.0.1:{free_port()}"
    procs.start("coordinator", cbir_command(
        "-v", "serve-coordinator", "--topology", str(topology_file),
        "--host", "127.0.0.1", "--port", coordinator.rsplit(":", 1)[1], "--wal", WAL))
    for addresses in topology.values():
        for address in addresses:
            procs.wait_serving(address, "cbir.v1.Shard", cfg.startup_timeout_s)
    procs.wait_serving(coordinator, "cbir.v1.Coordinator", cfg.startup_timeout_s)
    say(f"{cfg.shards} shards x {cfg.replicas} replicas + coordinator {coordinator} are SERVING "
        f"(topology: {topology_file}, logs: {procs.log_dir})")
    return coordinator


def start_web(cfg: DemoConfig, procs: ChildProcesses, coordinator: str) -> str:
    """``cbir serve-web`` over the coordinator; its URL once it answers /healthz."""
    import urllib.error
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    procs.start("web", cbir_command("-v", "serve-web", "--coordinator", coordinator,
                                    "--host", "127.0.0.1", "--port", str(port)))
    deadline = time.monotonic() + cfg.startup_timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as reply:
                if reply.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the web server at {url} did not become healthy; see its log")


def query_edited_photos(coordinator: str, photos: list[Photo], k: int) -> float:
    from cbir.client import CoordinatorClient

    per_edit: Counter[str] = Counter()
    hits_by_edit: Counter[str] = Counter()
    with CoordinatorClient(coordinator) as client:
        for photo in photos:
            expected = f"s3://{PHOTO_BUCKET}/photos/{photo.name}.jpg"
            for edit, data in edited_copies(photo):
                result = client.search_image(data, k=k)
                top = result.hits[0].key if result.hits else ""
                per_edit[edit] += 1
                hits_by_edit[edit] += int(top == expected)
                shown = "  ".join(f"{h.key.rsplit('/', 1)[-1]} {h.score:.3f}" for h in result.hits)
                mark = "ok  " if top == expected else "MISS"
                partial = f" partial={result.failed_shards}" if result.partial else ""
                print(f"  {mark} {photo.name:>22} [{edit:>6}] -> {shown}{partial}", flush=True)
    for edit in per_edit:
        say(f"  {edit:>6}: {hits_by_edit[edit]}/{per_edit[edit]} top-1 correct")
    return sum(hits_by_edit.values()) / max(1, sum(per_edit.values()))


def wait_until_a_child_exits(procs: ChildProcesses) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt) or until a server dies (then say which)."""
    while (gone := procs.exited()) is None:
        time.sleep(1.0)
    say(f"{gone[0]} exited with {gone[1]}; see {procs.log_dir / gone[0]}.log")
