"""`cbir backfill` fails with one clear line for the mistakes users make."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from cbir.cli import main
from cbir.errors import NotFound, PermissionDenied, Unauthenticated
from jobs.embed import reader
from tests.jobs_embed.conftest import ImageBucket
from tests.jobs_embed.helpers import read_manifest


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["backfill", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_missing_bucket(s3_endpoint: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "--input", "s3://no-such-bucket-xyz/imgs", "--output",
                      str(tmp_path), "--engine", "sequential")
    assert rc == 2
    assert err.strip().splitlines() == [
        "cbir backfill: error: listing s3://no-such-bucket-xyz/imgs: bucket does not exist"
    ]


def test_unknown_model(s3_endpoint: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "--input", "s3://b", "--output", str(tmp_path),
                      "--model", "nope")
    assert rc == 2 and "unknown model 'nope'; known models: efficientnet_lite0, resnet50" in err


def test_java_missing(image_bucket: ImageBucket, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                      ) -> None:
    # check_java runs before any session is created or reused, so this holds mid-suite too.
    monkeypatch.setenv("JAVA_HOME", os.path.join(str(tmp_path), "no-java"))
    rc, _, err = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos",
                      "--output", str(tmp_path / "out"), "--engine", "spark")
    assert rc == 2 and "Java was not found" in err


def test_cli_success_prints_summary(image_bucket: ImageBucket, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out_dir = str(tmp_path / "out")
    rc, out, _ = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos", "--output",
                      out_dir, "--engine", "sequential", "--objects-per-task", "3")
    assert rc == 0
    summary = json.loads(out)
    assert summary["num_images"] == 4 and summary["parts_written"] == 2
    assert read_manifest(out_dir).num_images == 4


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}}, "ListObjectsV2")


def test_s3_errors_translate_to_typed_errors() -> None:
    assert isinstance(reader.translate(_client_error("NoSuchBucket"), "x"), NotFound)
    assert isinstance(reader.translate(_client_error("InvalidAccessKeyId"), "x"),
                      Unauthenticated)
    assert isinstance(reader.translate(_client_error("AccessDenied"), "x"), PermissionDenied)
    assert isinstance(reader.translate(NoCredentialsError(), "x"), Unauthenticated)


def test_missing_output_bucket_and_output_at_input_root(
    image_bucket: ImageBucket, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"s3://{image_bucket.bucket}/photos"
    rc, _, err = _cli(capsys, "--input", src, "--output", "s3://no-such-out-bucket/e",
                      "--engine", "sequential")
    assert rc == 2 and "output s3://no-such-out-bucket/e: bucket does not exist" in err
    rc, _, err = _cli(capsys, "--input", src, "--output", f"s3://{image_bucket.bucket}",
                      "--engine", "sequential")
    assert rc == 2 and "must not be the root of the input bucket" in err
