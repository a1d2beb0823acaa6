"""``cbir backfill --inventory``: planning from an S3 Inventory report synthesised on moto gives
the same tasks as listing the bucket, and incremental runs never list the input."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from cbir import storage
from jobs.embed import job, plan
from tests.jobs_embed.conftest import SEQUENTIAL, ImageBucket, config_for, put, small_image
from tests.jobs_embed.helpers import read_embeddings


def _inventory(bucket: str, objects: dict[str, bytes], name: str = "inv") -> str:
    """A CSV inventory of ``objects`` as S3 writes one (ETag of a single PUT = MD5 of the body);
    a folder marker and a non-current version are in it too, as in real reports."""
    rows = [[bucket, quote_plus(k), str(len(d)), hashlib.md5(d).hexdigest(), "true", "false"]
            for k, d in objects.items()]
    rows.append([bucket, "photos/", "0", hashlib.md5(b"").hexdigest(), "true", "false"])
    rows.append([bucket, "photos/old.jpg", "9", "0" * 32, "false", "false"])
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
    data = gzip.compress(text.getvalue().encode())
    client = storage.s3_client()
    reports = f"{bucket}-inventory"  # S3 writes reports to a destination bucket of their own
    if reports not in {x["Name"] for x in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=reports)
    client.put_object(Bucket=reports, Key=f"{name}/data/1.csv.gz", Body=data)
    manifest = {"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{reports}",
                "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, ETag, IsLatest, IsDeleteMarker",
                "files": [{"key": f"{name}/data/1.csv.gz", "size": len(data),
                           "MD5checksum": hashlib.md5(data).hexdigest()}]}
    client.put_object(Bucket=reports, Key=f"{name}/manifest.json", Body=json.dumps(manifest))
    return f"s3://{reports}/{name}/manifest.json"


def test_planning_from_an_inventory_equals_planning_by_listing(
        image_bucket: ImageBucket, tmp_path: Path) -> None:
    import dataclasses

    b = image_bucket.bucket
    listed = config_for(f"s3://{b}", f"s3://{b}/out/emb")  # output inside the input: excluded
    put(b, "out/emb/stray.png", small_image(9))
    from_inventory = _inventory(b, {**image_bucket.objects, "out/emb/stray.png": small_image(9)})

    _, by_listing, _ = job._plan(listed, SEQUENTIAL, False)
    _, by_report, _ = job._plan(dataclasses.replace(listed, inventory=from_inventory),
                                SEQUENTIAL, False)
    assert by_report == by_listing  # same objects, sizes, ETags, part names
    assert sum(len(t.objects) for t in by_report) == len(image_bucket.objects)


def test_cli_backfill_from_inventory_and_incremental_without_listing(
        image_bucket: ImageBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from cbir.cli import main

    b = image_bucket.bucket
    photos = {k: d for k, d in image_bucket.objects.items() if k.startswith("photos/")}
    out = str(tmp_path / "emb")
    argv = ["backfill", "--input", f"s3://{b}/photos", "--output", out, "--engine",
            "sequential", "--no-progress", "--objects-per-task", "4"]

    def no_listing(*_args: object, **_kw: object) -> None:
        raise AssertionError("listed the bucket")

    monkeypatch.setattr(plan, "list_objects", no_listing)
    assert main([*argv, "--inventory", _inventory(b, photos)]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == len(photos)
    assert sorted(read_embeddings(out).column("key").to_pylist()) == sorted(
        f"s3://{b}/{k}" for k in photos)

    put(b, "photos/new.png", small_image(1))  # the next day's report has one more object
    newer = _inventory(b, {**photos, "photos/new.png": small_image(1)}, "inv-day2")
    assert main([*argv, "--inventory", newer]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == len(photos) + 1 and summary["parts_written"] == 1
    keys = read_embeddings(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == len(photos) + 1


def test_cli_refuses_a_missing_inventory_in_one_line(
        image_bucket: ImageBucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cbir.cli import main

    b = image_bucket.bucket
    code = main(["backfill", "--input", f"s3://{b}/photos", "--output", str(tmp_path / "e"),
                 "--engine", "sequential", "--no-progress",
                 "--inventory", f"s3://{b}/no/manifest.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "manifest.json" in err[0], err
