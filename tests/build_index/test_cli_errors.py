"""`cbir build-index` and `cbir index-pointer`: one line and exit code 2 for each mistake,
before reading embeddings, training or starting Spark where it can be known up front."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from jobs.build_index.build import BuildConfig
from jobs.build_index.cli import add_arguments
from tests.build_index import fixtures as fx
from tests.cli_capture import one_line, run_cli
from tests.conftest import free_port


@pytest.fixture
def run_uri(tmp_path: Path) -> str:
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(fx.keys_for(50), fx.random_vectors(50, 8)))
    return emb


def _build(capsys: pytest.CaptureFixture[str], emb: str, out: str, *extra: str
           ) -> tuple[int, str, str]:
    return run_cli(capsys, "build-index", "--embeddings", emb, "--output", out, "--shards", "2",
                "--no-progress", *extra)


def test_flag_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from cbir.options import build

    for name in ("CBIR_ENGINE", "CBIR_MASTER", "CBIR_TRAIN_SIZE"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--embeddings", "e", "--output", "o", "--shards", "3"])
    assert build(BuildConfig, args) == BuildConfig(embeddings="e", output="o", num_shards=3)
    assert args.engine == "sequential" == BuildConfig("e", "o", 3).engine.engine


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--shards", "0", "argument --shards: must be > 0, got 0"),
    ("--train-size", "-1", "argument --train-size: must be > 0, got -1"),
    ("--faiss-threads", "-2", "argument --faiss-threads: must be >= 0, got -2"),
    ("--target-recall", "1.5", "--target-recall must be in (0, 1], got 1.5"),
    ("--memory-budget-gb", "0", "argument --memory-budget-gb: must be > 0, got 0"),
])
def test_invalid_values_are_refused_by_the_parser(
    flag: str, value: str, says: str, run_uri: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _build(capsys, run_uri, str(tmp_path / "ix"), flag, value)
    assert rc == 2 and says in one_line(err)
    assert not (tmp_path / "ix").exists()


def test_master_without_the_spark_engine(run_uri: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _build(capsys, run_uri, str(tmp_path / "ix"), "--master", "local[2]")
    assert rc == 2 and one_line(err) == (
        "cbir build-index: error: --master/--conf need --engine spark (the sequential engine "
        "runs every task in this process)")


def test_missing_output_bucket(run_uri: str, s3_endpoint: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _build(capsys, run_uri, "s3://no-such-index-bucket/ix")
    assert rc == 2 and one_line(err) == (
        "cbir build-index: error: output s3://no-such-index-bucket/ix: bucket does not exist")


def test_run_with_zero_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb = str(tmp_path / "empty")
    fx.write_run(emb, fx.table([], np.zeros((0, 8), np.float32)), parts=1)
    rc, _, err = _build(capsys, emb, str(tmp_path / "ix"))
    assert rc == 2 and one_line(err) == (
        f"cbir build-index: error: the embeddings run {emb} holds 0 images: nothing to index "
        "(did the backfill read the right bucket and prefix?)")


def test_unreachable_master_fails_in_seconds(run_uri: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    master = f"spark://127.0.0.1:{free_port()}"
    start = time.monotonic()
    rc, _, err = _build(capsys, run_uri, str(tmp_path / "ix"), "--engine", "spark",
                        "--master", master)
    assert rc == 2 and f"cannot reach the Spark master {master}" in one_line(err)
    assert time.monotonic() - start < 10 and not (tmp_path / "ix").exists()


def test_unwritable_output(run_uri: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = _build(capsys, run_uri, str(blocker / "ix"))
    assert rc == 2
    assert one_line(err).startswith(f"cbir build-index: error: output {blocker / 'ix'} is "
                                     "not writable: ")


def test_index_pointer_in_a_missing_bucket(s3_endpoint: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "index-pointer", "set", "s3://no-such-pointer-bucket/CURRENT",
                      "--to", "s3://x/v1", "--no-check")
    assert rc == 2 and one_line(err) == (
        "cbir index-pointer: error: writing s3://no-such-pointer-bucket/CURRENT: bucket does "
        "not exist")
    rc, _, err = run_cli(capsys, "index-pointer", "get", "s3://no-such-pointer-bucket/CURRENT")
    assert rc == 2 and one_line(err) == (
        "cbir index-pointer: error: reading s3://no-such-pointer-bucket/CURRENT: bucket does "
        "not exist")
