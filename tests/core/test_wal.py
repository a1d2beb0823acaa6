"""The write-ahead log: entries round-trip, and concurrent writers (threads here, several
coordinators in production) get one gap-free total order, locally and on a real S3 endpoint
with conditional writes."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pytest

from cbir import storage
from cbir.errors import InvalidArgument
from cbir.wal import (
    Delete,
    LogEntry,
    ObjectInfo,
    ShardLog,
    Upsert,
    decode_entry,
    encode_entry,
    seq_of,
)


def _upsert(i: int) -> Upsert:
    vec = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return Upsert(i, f"s3://b/img-{i}.jpg", vec / np.linalg.norm(vec), {"label": f"l{i % 3}"})


def test_entry_round_trip() -> None:
    ops = (_upsert(1), Delete(7), Upsert(2, "s3://b/x", np.ones(8, np.float32)))
    entry = LogEntry(seq=42, shard=3, operations=ops, model_version="v1", created_ms=123)
    back = decode_entry(encode_entry(entry))
    assert (back.seq, back.shard, back.model_version, back.created_ms) == (42, 3, "v1", 123)
    assert len(back.operations) == 3
    first = back.operations[0]
    assert isinstance(first, Upsert) and first.key == "s3://b/img-1.jpg"
    np.testing.assert_array_equal(first.vector, ops[0].vector)
    assert first.attributes == {"label": "l1"}
    assert back.operations[1] == Delete(7)
    assert isinstance(back.operations[2], Upsert) and back.operations[2].attributes == {}


def test_object_metadata_round_trips() -> None:
    moment = dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.UTC)
    info = ObjectInfo(size=1234, width=640, height=480, content_type="image/jpeg",
                      last_modified=moment)
    ops = (Upsert(1, "s3://b/a.jpg", np.ones(8, np.float32), {"label": "cat"}, info),
           Delete(2), Upsert(3, "s3://b/v", np.ones(8, np.float32)))
    back = decode_entry(encode_entry(LogEntry(1, 0, ops, "v1", 0))).operations
    assert isinstance(back[0], Upsert) and back[0].info == info
    assert isinstance(back[2], Upsert) and back[2].info == ObjectInfo()


def test_an_entry_written_before_the_metadata_columns_still_reads() -> None:
    """Format 1 as first written: op, image_id, key, vector, attributes only."""
    table = pa.table({
        "op": pa.array([0, 1], pa.int8()), "image_id": pa.array([5, 6], pa.int64()),
        "key": pa.array(["s3://b/5", None]),
        "vector": pa.array([[1.0, 0.0], None], pa.list_(pa.float32())),
        "attributes": pa.array(['{"label": "dog"}', None]),
    }).replace_schema_metadata({"cbir.wal.format": "1", "cbir.wal.seq": "4",
                                "cbir.wal.shard": "0"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    entry = decode_entry(sink.getvalue().to_pybytes())
    assert entry.seq == 4
    first = entry.operations[0]
    assert isinstance(first, Upsert) and first.attributes == {"label": "dog"}
    assert first.info == ObjectInfo()
    assert entry.operations[1] == Delete(6)


def test_garbage_is_not_an_entry() -> None:
    with pytest.raises(InvalidArgument, match="not a write-ahead log entry"):
        decode_entry(b"garbage")


def test_names_order_and_parse() -> None:
    log = ShardLog("/tmp/x", 2)
    assert log.uri_of(5).endswith("shard=002/00000000000000000005.arrow")
    assert seq_of("00000000000000000005.arrow") == 5
    assert seq_of(".00000000000000000005.arrow.tmp") is None
    assert seq_of("manifest.json") is None


def _race(root: str, writers: int, per_writer: int) -> None:
    def write(w: int) -> None:
        log = ShardLog(root, 0)  # one log object per writer, like separate coordinators
        for j in range(per_writer):
            log.append([_upsert(w * 1000 + j)], "v1")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _check_total_order(root: str, writers: int, per_writer: int) -> None:
    entries = list(ShardLog(root, 0).read_after(0))
    assert [e.seq for e in entries] == list(range(1, writers * per_writer + 1))
    ids = [op.image_id for e in entries for op in e.operations]
    assert sorted(ids) == sorted(w * 1000 + j for w in range(writers) for j in range(per_writer))
    # Each writer's own writes stay in its order.
    for w in range(writers):
        mine = [i for i in ids if i // 1000 == w]
        assert mine == sorted(mine)
    assert ShardLog(root, 0).last_seq() == writers * per_writer
    assert [e.seq for e in ShardLog(root, 0).read_after(7)][:1] == [8]


def test_concurrent_writers_local(tmp_path: object) -> None:
    root = str(tmp_path)
    _race(root, writers=4, per_writer=10)
    _check_total_order(root, 4, 10)


def test_concurrent_writers_on_s3(bucket: str) -> None:
    root = f"s3://{bucket}/wal"
    _race(root, writers=3, per_writer=6)
    _check_total_order(root, 3, 6)
    assert not storage.create_if_absent(ShardLog(root, 0).uri_of(1), b"x")


def test_empty_append_is_refused(tmp_path: object) -> None:
    with pytest.raises(InvalidArgument):
        ShardLog(str(tmp_path), 0).append([], "v1")
