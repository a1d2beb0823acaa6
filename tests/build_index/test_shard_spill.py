"""The reduce side's local spill (issue 14): rows come back in (part, row group, piece) order
whatever order they arrived in, in chunks of at most ``CHUNK_BYTES`` of vectors, and the kept
rows come back sorted by id one bucket at a time (the external sort the sorted ids.parquet and
metadata.parquet are written from)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.build_index import partition, shard_spill
from tests.build_index import fixtures as fx


def _payloads(tbl: pa.Table, pieces: int) -> list[shard_spill.Payload]:
    size = -(-tbl.num_rows // pieces)
    return [((0, i, 0), partition._ipc(tbl.slice(i * size, size))) for i in range(pieces)]


def test_rows_come_back_in_order_in_bounded_chunks(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    n, dim = 5_000, 64
    monkeypatch.setattr(shard_spill, "CHUNK_BYTES", 300 * dim * 4)  # 300 rows a chunk
    tbl = fx.table(fx.keys_for(n), fx.random_vectors(n, dim))
    payloads = _payloads(tbl, 7)
    random.Random(3).shuffle(payloads)  # a shuffle delivers them in any order
    spill = shard_spill.ShardSpill.collect(payloads, tmp_path)
    keep = np.ones(n, bool)
    chunks = list(spill.chunks(keep, dim))
    assert max(len(ids) for ids, _ in chunks) <= 300
    ids = np.concatenate([i for i, _ in chunks])
    vectors = np.concatenate([v for _, v in chunks])
    assert np.array_equal(ids, tbl.column("image_id").to_numpy())
    assert np.array_equal(vectors, fx.random_vectors(n, dim))
    assert np.array_equal(spill.ids(), ids)
    assert spill.keys_at(np.array([0, 4_999, 301])) == {
        0: fx.keys_for(n)[0], 4_999: fx.keys_for(n)[4_999], 301: fx.keys_for(n)[301]}


@pytest.mark.parametrize(("bucket_bytes", "max_buckets"),
                         [(1 << 30, 256), (20_000, 256), (20_000, 5)])  # one; many; capped
def test_sorted_rows_are_the_kept_rows_in_id_order(tmp_path: Path, bucket_bytes: int,
                                                   max_buckets: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    n = 6_000
    monkeypatch.setattr(shard_spill, "BUCKET_BYTES", bucket_bytes)
    monkeypatch.setattr(shard_spill, "MIN_BUCKET_ROWS", 100)
    monkeypatch.setattr(shard_spill, "MAX_BUCKETS", max_buckets)
    tbl = fx.table(fx.keys_for(n), fx.random_vectors(n, 8))
    spill = shard_spill.ShardSpill.collect(_payloads(tbl, 5), tmp_path)
    keep = np.random.default_rng(0).random(n) < 0.7
    kept_ids = tbl.column("image_id").to_numpy()[keep]
    buckets = list(spill.sorted_rows(keep, kept_ids))
    assert (len(buckets) > 3) == (bucket_bytes < 1 << 30)
    assert len(buckets) <= max_buckets + 1  # the last bucket takes the remainder
    got = pa.concat_tables(buckets)
    expected = tbl.drop_columns(["embedding"]).filter(pa.array(keep)).sort_by("image_id")
    assert got.equals(expected)
    assert not list((tmp_path / "buckets").glob("*"))  # each bucket's file goes once read


def test_an_empty_spill_has_no_rows(tmp_path: Path) -> None:
    spill = shard_spill.ShardSpill.collect([], tmp_path)
    assert len(spill.ids()) == 0
    assert list(spill.sorted_rows(np.zeros(0, bool), np.zeros(0, np.int64))) == []
    assert list(spill.chunks(np.zeros(0, bool), 8)) == []
