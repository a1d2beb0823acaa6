"""A backfill under faults, end to end: real local Spark, the real default model, moto behind a
fault-injecting S3 proxy (503 SlowDown / 500 / 429 / resets / bodies cut mid-read on ~15% of
every request: listing, GETs, HEADs, part PUTs), >= 5% bad objects of several kinds (corrupt,
truncated, not an image, empty, decompression bomb, access denied, deleted after listing) and
one Python worker SIGKILLed right after committing its part (the test wraps the backfill's work
function: nothing in the product knows about it).

The job must succeed; every good image must be in the Parquet exactly once, every bad one in
_errors exactly once with its reason, and the manifest must count what happened.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from cbir import schema, storage
from demo.photos import bundled_photos
from jobs.embed.job import run_backfill
from tests.embedding import odd_images as odd
from tests.jobs_embed.conftest import LOCAL_SPARK, config_for, put, small_image
from tests.jobs_embed.faulty_s3 import FaultPlan, FaultyS3
from tests.jobs_embed.helpers import KillOnceAfterCommit, read_manifest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FAULT_RATE = 0.15
NUM_RANDOM = 30


def _objects() -> tuple[dict[str, bytes], set[str], dict[str, str]]:
    """(key -> bytes, good keys, bad key -> expected reason); the two proxy-made failures
    (access denied, deleted after listing) are real objects the proxy refuses to serve."""
    photos = {p.name: p for p in bundled_photos()}
    objects = {f"good/{n}.jpg": odd.save(odd.small(photos[n].pixels, 160), "JPEG")
               for n in ("chelsea", "coffee", "rocket", "astronaut")}
    objects.update({f"good/noise{i:02d}.png": small_image(i) for i in range(NUM_RANDOM)})
    good = set(objects)
    cat = odd.small(photos["chelsea"].pixels, 160)
    bad = {f"bad/{name}": reason for name, (_, reason) in odd.bad_objects(cat).items()}
    objects.update({f"bad/{name}": data for name, (data, _) in odd.bad_objects(cat).items()})
    for key, reason in (("bad/denied.jpg", "access_denied"), ("bad/deleted.jpg", "missing")):
        objects[key] = objects["good/coffee.jpg"]
        bad[key] = reason
    return objects, good, bad


@pytest.fixture
def worker_env(spark: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the Python workers of the next jobs: PySpark ships
    ``SparkContext.environment`` with every Python function, and a changed environment gets a
    fresh worker daemon, so the already running session's workers pick it up."""
    env = spark.sparkContext.environment
    saved = dict(env)
    yield env
    env.clear()
    env.update(saved)


def _count_by_key(uri: str) -> tuple[collections.Counter[str], dict[str, str]]:
    fs, path = storage.filesystem(uri)
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    keys = table.column("key").to_pylist()
    reasons = (table.column("reason").to_pylist() if "reason" in table.column_names
               else [""] * len(keys))
    return collections.Counter(keys), dict(zip(keys, reasons, strict=True))


def test_backfill_survives_s3_faults_bad_objects_and_a_killed_worker(
    bucket: str, s3_endpoint: str, worker_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects, good, bad = _objects()
    assert len(bad) / len(objects) >= 0.05
    for key, data in objects.items():
        put(bucket, key, data)
    out_bucket = f"out-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=out_bucket)
    config = config_for(f"s3://{bucket}", f"s3://{out_bucket}/emb", per_task=8)
    marker = tmp_path / "killed"

    plan = FaultPlan(rate=FAULT_RATE, seed=11, permanent={
        f"{bucket}/bad/denied.jpg": (403, "AccessDenied"),
        f"{bucket}/bad/deleted.jpg": (404, "NoSuchKey")})
    with FaultyS3(s3_endpoint, plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the driver
        # The engine ships the driver's endpoint to the executors' Python workers.
        manifest = run_backfill(config, LOCAL_SPARK, show_progress=False,
                                work_fn=KillOnceAfterCommit(str(marker)))
        faults = dict(plan.counts)
    print(f"\nfault proxy: {faults}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # read the results without faults

    killed_part = marker.read_text()  # the worker really died, after committing this part
    assert killed_part in manifest.parts
    rows, _ = _count_by_key(config.output)
    errors, reasons = _count_by_key(storage.join(config.output, schema.ERRORS_DIR))
    uri = f"s3://{bucket}/"
    assert rows == collections.Counter({uri + k: 1 for k in good})  # each good image once
    assert errors == collections.Counter({uri + k: 1 for k in bad})  # each bad one once
    assert reasons == {uri + k: r for k, r in bad.items()}

    extra = manifest.model_extra or {}
    print(f"manifest: images={manifest.num_images} errors={manifest.num_errors} "
          f"task_retries={extra['task_retries']} fetch_retries={extra['fetch_retries']} "
          f"s3_retries={extra['s3_retries']} skipped={extra['tasks_skipped']} "
          f"errors_by_reason={extra['errors_by_reason']}")
    assert (manifest.num_images, manifest.num_errors) == (len(good), len(bad))
    assert (extra["images_this_run"], extra["errors_this_run"]) == (len(good), len(bad))
    assert extra["errors_by_reason"] == dict(collections.Counter(bad.values()))
    assert extra["task_retries"] >= 1  # the killed attempt
    assert extra["tasks_skipped"] >= 1  # its retry found the part committed and wrote nothing
    assert extra["parts_written"] + extra["tasks_skipped"] == extra["tasks_run"]
    assert extra["fetch_retries"] > 0 and extra["s3_retries"] >= extra["fetch_retries"] - faults[
        "cut"]
    assert sum(faults.get(k, 0) for k in ("slowdown", "internal", "throttle", "reset")) > 0
    assert read_manifest(config.output) == manifest
