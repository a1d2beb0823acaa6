"""`cbir backfill` fails with one clear line and exit code 2 for the mistakes users make,
before any expensive work where the mistake can be known up front."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbir import storage
from cbir.errors import InvalidArgument
from tests.cli_capture import one_line, run_cli
from tests.conftest import free_port
from tests.jobs_embed.conftest import ImageBucket, config_for
from tests.jobs_embed.helpers import read_manifest


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "backfill", *args)


def test_flag_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from cbir.options import build
    from jobs.embed.cli import add_arguments
    from jobs.embed.config import DEFAULT_ENGINE
    from jobs.embed.job import JobOptions

    for name in ("CBIR_ENGINE", "CBIR_MASTER", "CBIR_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--input", "s3://b", "--output", "o"])
    assert build(JobOptions, args) == JobOptions(input="s3://b", output="o")
    assert args.engine == DEFAULT_ENGINE == "spark" and args.conf == [] and args.master is None
    # Kubernetes manifests may set any option through the environment instead.
    monkeypatch.setenv("CBIR_BATCH_SIZE", "16")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build(JobOptions, parser.parse_args(["--input", "s3://b", "--output", "o"])
                 ).batch_size == 16


def test_missing_bucket(s3_endpoint: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "--input", "s3://no-such-bucket-xyz/imgs", "--output",
                      str(tmp_path), "--engine", "sequential")
    assert rc == 2
    assert one_line(err) == (
        "cbir backfill: error: listing s3://no-such-bucket-xyz/imgs: bucket does not exist")


def test_unknown_model(s3_endpoint: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "--input", "s3://b", "--output", str(tmp_path),
                      "--model", "nope")
    assert rc == 2 and "unknown model 'nope'; known models: efficientnet_lite0, resnet50" in err


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--batch-size", "-5", "argument --batch-size: must be > 0, got -5"),
    ("--batch-size", "0", "argument --batch-size: must be > 0, got 0"),
    ("--objects-per-task", "0", "argument --objects-per-task: must be > 0, got 0"),
    ("--num-shards", "-1", "argument --num-shards: must be > 0, got -1"),
    ("--io-threads", "many", "argument --io-threads: expected an integer, got 'many'"),
    ("--device", "tpu", "--device 'tpu' is not a device: use cpu, cuda or cuda:N"),
    ("--conf", "spark.executor.memory", "expected KEY=VALUE"),
    ("--engine", "dask", "invalid choice: 'dask'"),
])
def test_invalid_values_are_refused_by_the_parser(
    flag: str, value: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _cli(capsys, "--input", "s3://b/p", "--output", str(tmp_path / "out"),
                      flag, value)
    assert rc == 2 and says in one_line(err) and one_line(err).startswith("cbir backfill")
    assert not (tmp_path / "out").exists()  # refused before anything was touched


def test_negative_batch_size_cannot_lose_images(
    image_bucket: ImageBucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to exit 0 after committing empty parts that every re-run then skipped."""
    out = str(tmp_path / "out")
    src = f"s3://{image_bucket.bucket}/photos"
    rc, _, _ = _cli(capsys, "--input", src, "--output", out, "--engine", "sequential",
                    "--batch-size", "-5")
    assert rc == 2 and list(storage.list_names(out)) == []
    with pytest.raises(InvalidArgument, match="batch_size must be positive"):
        dataclasses.replace(config_for(src, out), batch_size=-5)
    rc, _, _ = _cli(capsys, "--input", src, "--output", out, "--engine", "sequential",
                    "--batch-size", "2")
    assert rc == 0 and read_manifest(out).num_images == 4  # every image embedded


def test_empty_input_is_an_error_unless_allowed(
    image_bucket: ImageBucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = f"s3://{image_bucket.bucket}/photoz"
    rc, _, err = _cli(capsys, "--input", typo, "--output", str(tmp_path / "a"),
                      "--engine", "sequential")
    assert rc == 2 and one_line(err) == (
        f"cbir backfill: error: no objects under {typo}: check the bucket and prefix "
        "(pass --allow-empty to accept an empty input)")
    rc, out, _ = _cli(capsys, "--input", typo, "--output", str(tmp_path / "b"),
                      "--engine", "sequential", "--allow-empty")
    assert rc == 0 and json.loads(out)["num_images"] == 0


class _NotS3(http.server.BaseHTTPRequestHandler):
    """A web server, not S3: 200 and an HTML page for everything."""

    def do_GET(self) -> None:
        body = b"<html><body>hello</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_endpoint_that_is_not_s3(web_server: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", web_server)
    rc, _, err = _cli(capsys, "--input", "s3://b/p", "--output", str(tmp_path),
                      "--engine", "sequential")
    assert rc == 2 and one_line(err) == (
        f"cbir backfill: error: listing s3://b/p: {web_server} did not answer like S3: is "
        "AWS_ENDPOINT_URL an S3 endpoint?")


def test_endpoint_without_scheme(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")
    rc, _, err = _cli(capsys, "--input", "s3://b/p", "--output", str(tmp_path),
                      "--engine", "sequential")
    assert rc == 2 and one_line(err) == (
        "cbir backfill: error: AWS_ENDPOINT_URL='127.0.0.1:9000' is not a URL: give the "
        "scheme, e.g. http://127.0.0.1:9000 or https://...")


def test_unreachable_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    rc, _, err = _cli(capsys, "--input", "s3://b/p", "--output", str(tmp_path),
                      "--engine", "sequential")
    assert rc == 2 and one_line(err) == (
        f"cbir backfill: error: listing s3://b/p: cannot reach {url}: is it running and is "
        "AWS_ENDPOINT_URL right?")


def test_unwritable_output(image_bucket: ImageBucket, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, _, err = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos", "--output",
                      str(blocker / "out"), "--engine", "spark", "--master", "local[1]")
    assert rc == 2
    assert one_line(err).startswith(f"cbir backfill: error: output {blocker / 'out'} is not "
                                     "writable: ")


def test_missing_output_bucket_and_output_at_input_root(
    image_bucket: ImageBucket, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"s3://{image_bucket.bucket}/photos"
    rc, _, err = _cli(capsys, "--input", src, "--output", "s3://no-such-out-bucket/e",
                      "--engine", "sequential")
    assert rc == 2 and one_line(err) == (
        "cbir backfill: error: output s3://no-such-out-bucket/e: bucket does not exist")
    rc, _, err = _cli(capsys, "--input", src, "--output", f"s3://{image_bucket.bucket}",
                      "--engine", "sequential")
    assert rc == 2 and "must not be the root of the input bucket" in one_line(err)


@pytest.mark.parametrize(("master", "says"), [
    ("spark://127.0.0.1:{port}", "cannot reach the Spark master spark://127.0.0.1:{port} "
                                 "(127.0.0.1:{port}: Connection refused): is it running, and "
                                 "is that its host and port?"),
    ("sprak://host:7077", "--master 'sprak://host:7077' is not a Spark master"),
    ("spark://host-without-port", "expected spark://HOST:PORT"),
])
def test_wrong_or_unreachable_master_fails_in_seconds(
    master: str, says: str, image_bucket: ImageBucket, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    start = time.monotonic()
    rc, _, err = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos", "--output",
                      str(tmp_path / "out"), "--engine", "spark",
                      "--master", master.format(port=port))
    assert rc == 2 and says.format(port=port) in one_line(err)
    assert time.monotonic() - start < 10


def test_java_missing(image_bucket: ImageBucket, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                      ) -> None:
    # check_java runs before any session is created or reused, so this holds mid-suite too.
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    rc, _, err = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos",
                      "--output", str(tmp_path / "out"), "--engine", "spark")
    assert rc == 2 and "Java was not found" in one_line(err)


def test_cli_success_prints_summary(image_bucket: ImageBucket, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = str(tmp_path / "out")
    rc, out, err = _cli(capsys, "--input", f"s3://{image_bucket.bucket}/photos", "--output",
                        out_dir, "--engine", "sequential", "--objects-per-task", "3")
    assert rc == 0
    # stderr is not a terminal here: plain progress lines, counted in images
    assert "\r" not in err and "4/4" in err.splitlines()[-1] and "img/s" in err
    summary = json.loads(out)
    assert summary["num_images"] == 4 and summary["parts_written"] == 2
    assert read_manifest(out_dir).num_images == 4
