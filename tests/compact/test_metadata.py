"""Compaction keeps what filters see: an upserted image's metadata row in the compacted version
(built by the real build from the snapshot) equals the row a replica of that version gives it in
its delta (``cbir.live_metadata``): object info, a typed sidecar column, string attributes, an
attribute named like a built-in column (``attr_width``), a value that does not fit (null)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cbir import index_layout, storage
from cbir.ids import image_id, shard_of
from cbir.index_pointer import write_pointer
from cbir.live_metadata import metadata_batch
from cbir.schema import backfill_schema
from cbir.wal import ObjectInfo, ShardLog, Upsert
from jobs.build_index.build import BuildConfig, build_index
from jobs.compact.compact import CompactConfig, compact
from tests.build_index import fixtures as fx

DIM = 8


def _base_run(uri: str, n: int) -> None:
    keys = fx.keys_for(n)
    plain = fx.table(keys, fx.random_vectors(n, DIM))
    schema = backfill_schema(DIM, fx.MODEL, fx.MODEL_VERSION, pa.schema([("rating", pa.int32())]))
    extra = {
        "last_modified": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * n,
                                  schema.field("last_modified").type),
        "content_type": pa.array(["image/jpeg"] * n),
        "attributes": pa.array([[("label", "dog")]] * n, schema.field("attributes").type),
        "rating": pa.array(list(range(n)), pa.int32()),
    }
    columns = [plain.column(f.name) if f.name in plain.column_names else extra[f.name]
               for f in schema]
    fx.write_run(uri, pa.Table.from_arrays(columns, schema=schema))


def _metadata_rows(index: str, shard: int) -> tuple[dict[int, dict[str, object]], pa.Schema]:
    fs, path = storage.filesystem(index_layout.shard_file(index, shard,
                                                          index_layout.METADATA_FILE))
    table = pq.read_table(path, filesystem=fs)
    return {int(row["image_id"]): row for row in table.to_pylist()}, table.schema


def test_compacted_metadata_is_what_the_delta_served(tmp_path: Path) -> None:
    root = str(tmp_path)
    _base_run(f"{root}/emb", 200)
    build_index(BuildConfig(f"{root}/emb", f"{root}/indexes/v1", 2, "Flat"), show_progress=False)
    write_pointer(f"{root}/indexes/CURRENT", f"{root}/indexes/v1")
    when = dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    upserts = [
        Upsert(image_id(k), k, fx.random_vectors(1, DIM, i)[0], attrs, info)
        for i, (k, attrs, info) in enumerate([
            ("s3://photos/new/a.jpg", {"rating": "4", "label": "cat", "width": "9"},
             ObjectInfo(1234, 640, 480, "image/png", when)),
            ("s3://photos/new/b.jpg", {"rating": "lots"}, ObjectInfo()),  # does not fit: null
            (fx.keys_for(200)[3], {"label": "bird"}, ObjectInfo(size=77)),  # a replacement
        ])]
    for u in upserts:
        ShardLog(f"{root}/wal", shard_of(u.image_id, 2)).append([u], fx.MODEL_VERSION)
    summary = compact(CompactConfig(index_pointer=f"{root}/indexes/CURRENT", wal=f"{root}/wal",
                                    output=f"{root}/indexes/compacted", num_shards=2),
                      show_progress=False)
    for u in upserts:
        rows, schema = _metadata_rows(summary["index"], shard_of(u.image_id, 2))
        assert "attr_width" in schema.names and "rating" in schema.names
        delta_row = metadata_batch([u], schema).to_pylist()[0]
        assert rows[u.image_id] == delta_row
    a = _metadata_rows(summary["index"], shard_of(upserts[0].image_id, 2))[0][upserts[0].image_id]
    assert (a["size"], a["rating"], a["label"], a["attr_width"]) == (1234, 4, "cat", "9")
    b = _metadata_rows(summary["index"], shard_of(upserts[1].image_id, 2))[0][upserts[1].image_id]
    assert b["rating"] is None and b["width"] is None
    assert summary["count"] == 200 + 2
