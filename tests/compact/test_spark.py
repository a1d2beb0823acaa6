"""Compaction on Spark (a real local session) folds and builds exactly what the sequential
engine does: the same snapshot rows and byte-identical shard indexes with the same positions."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cbir import index_layout
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest
from jobs.compact.compact import CompactConfig, compact
from jobs.engines import EngineOptions
from tests.build_index import fixtures as fx
from tests.compact.helpers import SHARDS, LiveIndex, assert_holds, delete, make_live_index, upsert


def _with_writes(root: Path) -> LiveIndex:
    live = make_live_index(str(root))
    keys = fx.keys_for(300)
    live.write([upsert("s3://photos/new/0.jpg", 1), upsert(keys[4], 2), delete(keys[7])])
    live.write([delete("s3://photos/new/0.jpg"), upsert("s3://photos/new/1.jpg", 3)])
    return live


def _rows(snapshot: str) -> list[tuple[int, str, list[float]]]:
    table = ds.dataset(snapshot, format="parquet").to_table(
        columns=["image_id", "key", "embedding"]).sort_by("image_id")
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


@pytest.mark.spark
def test_spark_compacts_what_sequential_compacts(tmp_path: Path, spark: object) -> None:
    results = {}
    for name, engine in (("sequential", EngineOptions()),
                         ("spark", EngineOptions("spark", "local[2]"))):
        live = _with_writes(tmp_path / name)
        config = CompactConfig(index_pointer=live.pointer, wal=live.wal,
                               output=f"{live.root}/compacted", num_shards=SHARDS, engine=engine)
        summary = compact(config, show_progress=False)
        assert_holds(summary["index"], live.expected)
        results[name] = summary
    seq, par = results["sequential"], results["spark"]
    assert seq["wal_seq"] == par["wal_seq"] and seq["fold"] == par["fold"]
    assert _rows(seq["embeddings"]) == _rows(par["embeddings"])
    for s in range(SHARDS):
        a, b = (read_manifest(index_layout.shard_file(r["index"], s, INDEX_MANIFEST),
                              ShardManifest) for r in (seq, par))
        assert (a.checksum, a.wal_seq, a.count) == (b.checksum, b.wal_seq, b.count)
