"""Compaction folds the log exactly like the replicas apply it: after ``compact`` the new
version holds (ids, keys, vectors) equal to a direct computation over the base + the log, its
shard manifests record the folded positions, and the pointer names it. Real build, real Faiss,
the run / version / pointer / log on moto's S3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument
from cbir.ids import image_id
from cbir.index_pointer import read_pointer
from cbir.schema import EMBED_MANIFEST, EmbedManifest, backfill_schema, read_manifest
from cbir.wal import LogEntry, Operation, Upsert
from jobs.build_index.build import BuildConfig, build_index
from jobs.compact import fold
from jobs.compact.compact import CompactConfig, compact, flip, read_start
from tests.build_index import fixtures as fx
from tests.compact.helpers import (
    LiveIndex,
    assert_holds,
    delete,
    make_live_index,
    shard_wal_seqs,
    upsert,
)


def _config(live: LiveIndex) -> CompactConfig:
    return CompactConfig(index_pointer=live.pointer, wal=live.wal,
                         output=f"{live.root}/compacted", num_shards=2)


def test_last_write_per_id_wins_in_log_order() -> None:
    a, b, c, d, e = (f"s3://photos/img/{i:07d}.jpg" for i in range(5))
    ops: list[list[Operation]] = [
        [upsert(a, 1), upsert(b, 2), delete(c)], [delete(a), upsert(c, 3), upsert(d, 4)],
        [upsert(a, 5), delete(d)], [upsert(e, 6)]]
    entries = [LogEntry(i + 1, 0, tuple(o), fx.MODEL_VERSION, 0) for i, o in enumerate(ops)]
    final = fold.last_writes(entries)
    changes = fold.Changes.of(final)
    assert changes.touched.tolist() == sorted(image_id(k) for k in (a, b, c, d, e))
    by_id = {u.image_id: u for u in changes.upserts}
    assert sorted(by_id) == sorted(image_id(k) for k in (a, b, c, e))
    np.testing.assert_array_equal(by_id[image_id(a)].vector, upsert(a, 5).vector)
    np.testing.assert_array_equal(by_id[image_id(c)].vector, upsert(c, 3).vector)
    assert changes.deletes == 1  # d: upserted, then deleted


@pytest.fixture
def live(bucket: str) -> LiveIndex:
    return make_live_index(f"s3://{bucket}")


def test_compact_folds_every_case_and_flips_the_pointer(live: LiveIndex) -> None:
    keys = fx.keys_for(300)
    new = [f"s3://photos/new/{i}.jpg" for i in range(6)]
    live.write([upsert(new[0], 100), upsert(keys[0], 101), delete(keys[1]),
                delete(keys[2]), upsert(new[1], 102), delete(keys[3])])  # first three cases
    live.write([upsert(keys[2], 103), delete(new[1]), upsert(keys[0], 104)])  # del->up, up->del
    live.write([upsert(new[2], 105), delete(new[3])])  # a delete of an id never upserted
    summary = compact(_config(live), show_progress=False)
    index = summary["index"]
    assert summary["compacted"] and read_pointer(live.pointer) == index
    heads = summary["wal_seq"]
    assert summary["wal_seq_from"] == [0, 0] and heads == live.heads
    assert summary["fold"]["entries"] == sum(heads)
    assert shard_wal_seqs(index) == heads
    assert_holds(index, live.expected)
    assert summary["count"] == len(live.expected.live) == 300 + 2 - 2
    snapshot = read_manifest(storage.join(summary["embeddings"], EMBED_MANIFEST), EmbedManifest)
    assert snapshot.num_images == len(live.expected.live)
    assert snapshot.model_extra and snapshot.model_extra["compacted_from"]["wal_seq"] == heads

    # A second compaction starts from the first one's positions and folds only later entries.
    live.write([delete(new[0]), upsert(keys[5], 106), upsert(new[4], 107)])
    again = compact(_config(live), show_progress=False)
    assert again["wal_seq_from"] == heads and again["wal_seq"] == live.heads
    assert read_pointer(live.pointer) == again["index"]
    assert again["fold"]["entries"] == sum(again["wal_seq"]) - sum(heads)
    assert shard_wal_seqs(again["index"]) == again["wal_seq"]
    assert_holds(again["index"], live.expected)


def test_nothing_to_fold_leaves_the_pointer(live: LiveIndex) -> None:
    before = read_pointer(live.pointer)
    summary = compact(_config(live), show_progress=False)
    assert summary["compacted"] is False and read_pointer(live.pointer) == before


def test_log_upserts_become_rows_of_the_runs_schema() -> None:
    """Key, vector, shard and attributes from the log; the other metadata columns null; the
    run's Parquet metadata (model, dim) kept."""
    schema = backfill_schema(4, fx.MODEL, fx.MODEL_VERSION)
    vector = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    key = "s3://photos/new/x.jpg"
    table = fold.upserts_table([Upsert(image_id(key), key, vector, {"label": "cat"})], schema, 3)
    assert table.schema == schema and table.schema.metadata == schema.metadata
    row = table.to_pylist()[0]
    assert (row["image_id"], row["key"], row["shard"]) == (image_id(key), key, image_id(key) % 3)
    assert row["embedding"] == vector.tolist() and row["attributes"] == [("label", "cat")]
    assert row["width"] is None and row["content_type"] is None
    with pytest.raises(FailedPrecondition, match="the index holds 4-d vectors"):
        fold.upserts_table([Upsert(1, key, np.zeros(3, np.float32))], schema, 3)


def test_build_refuses_positions_for_another_shard_count(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="1 log positions for 2 shards"):
        build_index(BuildConfig(str(tmp_path / "emb"), str(tmp_path / "ix"), 2, "Flat",
                                wal_seqs=(1,)))


def test_no_flip_over_a_pointer_that_moved(tmp_path: Path) -> None:
    """Another flip during compaction wins: the compacted version is left unflipped."""
    live = make_live_index(str(tmp_path))
    live.write([upsert("s3://photos/new/a.jpg", 1)])
    start = read_start(_config(live))
    other = read_pointer(live.pointer) + "-other"
    storage.write_bytes(live.pointer, (other + "\n").encode())
    with pytest.raises(FailedPrecondition, match="the pointer moved"):
        flip(_config(live), start, str(tmp_path / "new"))
    assert read_pointer(live.pointer) == other
