"""The partition step: one read of the embeddings run whatever the shard count, shards that hold
exactly the run's rows, an exact-size training sample, and recall misses that are not shipped."""

from __future__ import annotations

import io
from pathlib import Path

import faiss
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bench.counting_fs import CountingFilesystem
from cbir import index_layout, storage
from cbir.ids import shards_of
from cbir.schema import ShardManifest, read_manifest
from jobs.build_index import embeddings_run, select
from jobs.build_index.build import BuildConfig, build_index
from jobs.build_index.shard import RecallNotReached
from tests.build_index import fixtures as fx


def _run(root: Path, n: int = 3000, parts: int = 4, dup: int = 0) -> str:
    keys = fx.keys_for(n)
    vectors = fx.glove(n)
    if dup:  # exact duplicates of the first rows, in later parts
        keys, vectors = [*keys, *keys[:dup]], np.concatenate([vectors, vectors[:dup]])
    emb = str(root / "emb")
    fx.write_run(emb, fx.table(keys, vectors), parts=parts)
    return emb


def _parquet_bytes(emb: str) -> int:
    return sum(Path(emb, f).stat().st_size for f in Path(emb).glob("*.parquet"))


def test_partitioned_shards_hold_exactly_the_parquet_rows(tmp_path: Path) -> None:
    emb, out, shards = _run(tmp_path, dup=50), str(tmp_path / "ix"), 3
    top = build_index(BuildConfig(emb, out, shards, "IVF16,Flat", tune_queries=100))
    assert top is not None and top.count == 3000
    table = ds.dataset(emb, format="parquet").to_table()  # the direct computation
    all_ids = table.column("image_id").to_numpy()
    all_vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 50)
    first = {int(i): row for row, i in reversed(list(enumerate(all_ids)))}
    for s in range(shards):
        ids_table = pq.read_table(io.BytesIO(storage.read_bytes(
            index_layout.shard_file(out, s, index_layout.IDS_FILE))))
        ids = np.array(ids_table.column("image_id").to_pylist(), np.int64)
        want = sorted(i for i in first if shards_of(np.array([i]), shards)[0] == s)
        assert ids.tolist() == want
        index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(
            index_layout.shard_file(out, s, index_layout.INDEX_FILE)), np.uint8))
        assert index.ntotal == len(want)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        got = index.reconstruct_batch(ids)
        assert np.array_equal(got, all_vectors[[first[int(i)] for i in ids]])


@pytest.mark.parametrize("shards", [1, 8])
def test_the_build_reads_the_data_once_whatever_the_shard_count(
        tmp_path: Path, shards: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Parts of ~2 MB: the fixed per-part cost (footer reads) is small beside the data, as it
    # is for real parts (hundreds of MB).
    emb = _run(tmp_path, n=20_000, parts=2)
    counter = CountingFilesystem(embeddings_run.filesystem)
    monkeypatch.setattr(embeddings_run, "filesystem", counter)
    top = build_index(BuildConfig(emb, str(tmp_path / "ix"), shards, "Flat"))
    assert top is not None and top.count == 20_000
    ratio = counter.bytes_read / _parquet_bytes(emb)
    assert 1.0 <= ratio <= 1.25, ratio  # the old build read (shards + 1) x the data


def test_training_sample_is_the_size_asked_and_reads_a_subset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = _run(tmp_path, n=6000, parts=6)  # 12 row groups of 500
    counter = CountingFilesystem(embeddings_run.filesystem)
    monkeypatch.setattr(embeddings_run, "filesystem", counter)
    dataset = embeddings_run.open_dataset(emb, 50)
    sample = embeddings_run.read_sample(dataset, 50, 700, seed=3)
    assert sample.shape == (700, 50)
    assert counter.bytes_read < 0.5 * _parquet_bytes(emb)  # 2 of 12 row groups, + footers
    data = {row.tobytes() for row in fx.glove(6000)}
    assert all(row.tobytes() in data for row in sample)
    assert len({row.tobytes() for row in sample}) == 700
    assert np.array_equal(sample, embeddings_run.read_sample(dataset, 50, 700, seed=3))
    assert not np.array_equal(sample, embeddings_run.read_sample(dataset, 50, 700, seed=4))
    assert embeddings_run.read_sample(dataset, 50, 10_000, seed=3).shape == (6000, 50)


def test_a_recall_miss_fails_and_ships_nothing(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cbir.cli import main

    emb, out = _run(tmp_path), str(tmp_path / "ix")
    config = BuildConfig(emb, out, 2, "IVF16,PQ2", target_recall=0.99, tune_queries=100)
    with pytest.raises(RecallNotReached, match=r"reaches recall@10 0\.\d+.*< target 0\.99"):
        build_index(config)
    assert not storage.exists(index_layout.index_manifest_uri(out))
    assert not storage.exists(index_layout.shard_file(out, 0, "manifest.json"))
    assert main(["build-index", "--embeddings", emb, "--output", out, "--shards", "2",
                 "--index", "IVF16,PQ2", "--target-recall", "0.99"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("build-index:")]  # the progress bar's lines
    assert len(err) == 1 and "not shipped" in err[0], err


def test_an_automatic_choice_moves_to_the_next_candidate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb, out = _run(tmp_path), str(tmp_path / "ix")
    offered = [select.IndexChoice("IVF16,PQ2", 1, "test"), select.IndexChoice("IVF16,SQ8", 2,
                                                                               "test")]
    monkeypatch.setattr(select, "candidates", lambda *_args: offered)
    top = build_index(BuildConfig(emb, out, 2, None, target_recall=0.95, tune_queries=100))
    assert top is not None and top.factory == "IVF16,SQ8"
    assert top.recall_at_10 is not None and top.recall_at_10 >= 0.95
    for s in range(2):
        m = read_manifest(index_layout.shard_file(out, s, "manifest.json"), ShardManifest)
        assert m.factory == "IVF16,SQ8" and m.index_version == top.index_version
