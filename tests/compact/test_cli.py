"""``cbir compact`` through the real entry point: a JSON summary on stdout and progress lines on
stderr; each mistake (no pointer, --shards unlike the version, an unreadable or foreign log, a
version that does not name its embeddings, engine flags without Spark) is one line and exit
code 2, and the pointer is left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir import index_layout, storage
from cbir.index_pointer import read_pointer
from cbir.schema import IndexManifest, read_manifest, write_manifest
from cbir.wal import ShardLog, entry_name
from tests.build_index import fixtures as fx
from tests.cli_capture import one_line, run_cli
from tests.compact.helpers import LiveIndex, assert_holds, make_live_index, upsert


@pytest.fixture
def live(tmp_path: Path) -> LiveIndex:
    index = make_live_index(str(tmp_path))
    index.write([upsert("s3://photos/new/a.jpg", 1), upsert("s3://photos/new/b.jpg", 2)])
    return index


def _compact(capsys: pytest.CaptureFixture[str], live: LiveIndex, *extra: str,
             pointer: str | None = None, wal: str | None = None) -> tuple[int, str, str]:
    return run_cli(capsys, "compact", "--index-pointer", pointer or live.pointer,
                   "--wal", wal or live.wal, "--output", f"{live.root}/compacted",
                   *(extra or ("--shards", "2")))


def test_cli_compacts_and_prints_a_summary(live: LiveIndex,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _compact(capsys, live)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["compacted"] and summary["wal_seq"] == live.heads
    assert read_pointer(live.pointer) == summary["index"]
    assert "cbir compact: " in err and "2 entries" in err  # progress on stderr
    assert_holds(summary["index"], live.expected)


def _refused(capsys: pytest.CaptureFixture[str], live: LiveIndex, says: str, *extra: str,
             pointer: str | None = None, wal: str | None = None) -> None:
    before = read_pointer(live.pointer)
    rc, out, err = _compact(capsys, live, *extra, pointer=pointer, wal=wal)
    assert rc == 2 and not out
    line = one_line(err)
    assert line.startswith("cbir") and says in line, line
    assert read_pointer(live.pointer) == before


def test_no_pointer(live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, live, "no index pointer at", pointer=f"{live.root}/indexes/NOPE")


def test_shards_unlike_the_version(live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, live, "--shards 3, but", "--shards", "3")
    _refused(capsys, live, "argument --shards: must be > 0", "--shards", "0")


def test_corrupt_log_entry(live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    uri = ShardLog(live.wal, 0).uri_of(1)
    storage.write_bytes(uri, b"not arrow")
    _refused(capsys, live, "unreadable log entry")


def test_log_with_a_gap(live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    # An entry past a missing one: the range up to the head cannot be read whole.
    data = storage.read_bytes(ShardLog(live.wal, 0).uri_of(1))
    storage.write_bytes(storage.join(ShardLog(live.wal, 0).prefix, entry_name(3)), data)
    _refused(capsys, live, "entry 2 is missing")


def test_wal_is_a_file(live: LiveIndex, capsys: pytest.CaptureFixture[str],
                       tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    _refused(capsys, live, "is a file, not a log root", wal=str(tmp_path / "file"))


def test_missing_bucket_for_the_log(live: LiveIndex, capsys: pytest.CaptureFixture[str],
                                    s3_endpoint: str) -> None:
    _refused(capsys, live, "no-such-bucket-cbir", wal="s3://no-such-bucket-cbir/wal")


def test_version_that_does_not_name_its_embeddings(
        live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    uri = index_layout.index_manifest_uri(read_pointer(live.pointer))
    old = read_manifest(uri, IndexManifest).model_copy(update={"embeddings": ""})
    write_manifest(uri, old)
    _refused(capsys, live, "does not record the embeddings run")


def test_foreign_log(live: LiveIndex, capsys: pytest.CaptureFixture[str],
                     tmp_path: Path) -> None:
    """A version that folded entry 2 meets a log without it: not the log it follows."""
    first = read_pointer(live.pointer)
    assert _compact(capsys, live)[0] == 0
    other = tmp_path / "other-wal"
    other.mkdir()
    _refused(capsys, live, "has no entry", wal=str(other))
    assert read_pointer(live.pointer) != first


def test_engine_flags_need_spark(live: LiveIndex, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, live, "--master/--conf need --engine spark", "--shards", "2",
             "--master", "local[2]")


def test_model_version_of_the_log_must_match(live: LiveIndex,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ShardLog(live.wal, 1).append([upsert("s3://photos/new/c.jpg", 3)], "another-model")
    _refused(capsys, live, f"model version another-model; the index is {fx.MODEL_VERSION}")
