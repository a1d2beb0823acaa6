"""The index build end to end: local and S3, sequential and Spark, manifests, collisions,
tuning, and sharded search == one flat index."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from cbir import index_layout, storage
from cbir.errors import FailedPrecondition, IdCollision, NotFound
from cbir.ids import image_id, shards_of
from cbir.schema import IndexManifest, ShardManifest, read_manifest
from jobs import engines
from jobs.build_index.build import (
    BuildConfig,
    ShardJob,
    build_index,
    build_shard,
    plan,
    reduce_shard,
)
from jobs.build_index.partition import route_part
from jobs.engines import ENGINES, EngineOptions
from shard_server.index_store import Expectations, load_shard
from shard_server.searcher import run_search
from tests.build_index import fixtures as fx


def _config(emb: str, out: str, shards: int, factory: str | None = None,
            **kw: object) -> BuildConfig:
    return BuildConfig(embeddings=emb, output=out, num_shards=shards, factory=factory,
                       **kw)  # type: ignore[arg-type]


def _built(config: BuildConfig) -> IndexManifest:
    """A whole build (no --shard-only): it must end with the top-level manifest."""
    top = build_index(config)
    assert top is not None
    return top


def _shard_files(root: str, shard: int) -> tuple[ShardManifest, bytes, list[int], list[str]]:
    m = read_manifest(index_layout.shard_file(root, shard, "manifest.json"), ShardManifest)
    data = storage.read_bytes(index_layout.shard_file(root, shard, index_layout.INDEX_FILE))
    ids_bytes = storage.read_bytes(index_layout.shard_file(root, shard, index_layout.IDS_FILE))
    table = pq.read_table(io.BytesIO(ids_bytes))
    return m, data, table.column("image_id").to_pylist(), table.column("key").to_pylist()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str], np.ndarray]:
    root = str(tmp_path_factory.mktemp("emb") / "run")
    keys = fx.keys_for(600)
    vectors = fx.random_vectors(600, 16, seed=1)
    fx.write_run(root, fx.table(keys, vectors))
    return root, keys, vectors


def test_flat_build_layout_manifests_and_reassigned_shards(
    small_run: tuple[str, list[str], np.ndarray], tmp_path: Path
) -> None:
    emb, keys, _ = small_run
    out = str(tmp_path / "ix")
    top = _built(_config(emb, out, 3))  # source shard column says 7 shards: ignored
    assert top.factory == "IDMap2,Flat" and top.count == 600 and top.num_shards == 3
    assert top.recall_at_10 == 1.0 and top.search_params == {}
    assert top.model_version == fx.MODEL_VERSION and top.index_version.startswith("ix-")
    assert read_manifest(index_layout.index_manifest_uri(out), IndexManifest) == top
    want = {k: image_id(k) for k in keys}
    seen: dict[int, str] = {}
    for s in range(3):
        m, data, ids, shard_keys = _shard_files(out, s)
        assert m.checksum == index_layout.sha256_hex(data)
        assert (m.shard, m.num_shards, m.dim, m.metric) == (s, 3, 16, "ip")
        assert m.count == len(ids) and ids == sorted(ids)
        assert set(shards_of(np.array(ids), 3).tolist()) <= {s}
        index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        assert index.ntotal == m.count
        seen.update(zip(ids, shard_keys, strict=True))
    assert seen == {v: k for k, v in want.items()}
    again = _built(_config(emb, str(tmp_path / "ix2"), 3))
    assert again.index_version == top.index_version  # stable hash of the inputs


def test_refuses_a_run_without_manifest(tmp_path: Path) -> None:
    emb = str(tmp_path / "unfinished")
    fx.write_run(emb, fx.table(fx.keys_for(10), fx.random_vectors(10, 8)), manifest=False)
    with pytest.raises(NotFound, match=r"_MANIFEST\.json not found.*unfinished"):
        build_index(_config(emb, str(tmp_path / "ix"), 2))


def test_id_collision_is_detected(tmp_path: Path) -> None:
    keys = fx.keys_for(20)
    ids = [image_id(k) for k in keys]
    ids[5] = ids[3]  # a different key with the same id
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(keys, fx.random_vectors(20, 8), ids=ids))
    with pytest.raises(IdCollision, match=keys[5].replace(".", r"\.")):
        build_index(_config(emb, str(tmp_path / "ix"), 2))


def test_exact_duplicates_are_dropped(tmp_path: Path) -> None:
    keys = fx.keys_for(30)
    vectors = fx.random_vectors(30, 8)
    dup = fx.table([*keys, *keys[:10]], np.concatenate([vectors, vectors[:10]]))
    emb = str(tmp_path / "emb")
    fx.write_run(emb, dup, parts=4)  # the duplicates land in other parts
    top = _built(_config(emb, str(tmp_path / "ix"), 2))
    assert top.count == 30


def test_unnormalised_embeddings_are_refused(tmp_path: Path) -> None:
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(fx.keys_for(10), fx.random_vectors(10, 8) * 3))
    with pytest.raises(FailedPrecondition, match="not L2-normalised"):
        build_index(_config(emb, str(tmp_path / "ix"), 1))


def test_s3_build_equals_local_build(bucket: str, tmp_path: Path,
                                     small_run: tuple[str, list[str], np.ndarray]) -> None:
    local_emb, keys, vectors = small_run
    s3_emb = f"s3://{bucket}/embeddings/run1"
    fx.write_run(s3_emb, fx.table(keys, vectors))
    s3_top = _built(_config(s3_emb, f"s3://{bucket}/indexes/v1", 2))
    local_top = _built(_config(local_emb, str(tmp_path / "ix"), 2))
    assert s3_top.count == local_top.count == 600
    for s in range(2):
        s3_files = _shard_files(f"s3://{bucket}/indexes/v1", s)
        local_files = _shard_files(str(tmp_path / "ix"), s)
        assert s3_files[1:] == local_files[1:]  # same index bytes, same id table
    assert storage.exists(f"s3://{bucket}/indexes/v1/manifest.json")


def _engine(name: str, request: pytest.FixtureRequest) -> EngineOptions:
    if name == "spark":
        request.getfixturevalue("spark")  # the shared local session
        return EngineOptions("spark", "local[2]")
    return EngineOptions(name)  # type: ignore[arg-type]


@pytest.mark.spark
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_builds_what_sequential_builds(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(fx.keys_for(3000), fx.glove(3000)), parts=4)
    planned = plan(_config(emb, str(tmp_path / "plan"), 3, "IVF32,Flat", tune_queries=100))

    def build(out: str, options: EngineOptions) -> list[ShardManifest]:
        job = ShardJob(dataclasses.replace(planned.tasks[0], output=out), planned.trained)
        return [f.result for f in engines.run_partitioned(
            planned.parts, route_part, reduce_shard, 3, options, shared=job)]

    def one_by_one(out: str) -> list[ShardManifest]:  # each shard on its own: build_shard
        moved = [dataclasses.replace(t, output=out) for t in planned.tasks]
        return [f.result for f in engines.run(moved, build_shard, EngineOptions(),
                                              shared=planned.trained)]

    seq = build(str(tmp_path / "a"), EngineOptions("sequential"))
    par = build(str(tmp_path / "b"), _engine(engine, request))
    alone = one_by_one(str(tmp_path / "c"))
    assert [m.checksum for m in seq] == [m.checksum for m in par] == [m.checksum for m in alone]
    for s in range(3):
        a, b = _shard_files(str(tmp_path / "a"), s), _shard_files(str(tmp_path / "b"), s)
        assert a[0] == b[0] and a[1:] == b[1:]
        assert a[0].count > 0


@pytest.mark.spark
@pytest.mark.parametrize("engine", ENGINES)
def test_a_typed_task_error_reaches_the_driver_typed(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One error policy: a permanent CbirError raised in a task is the driver's error."""
    emb = str(tmp_path / "emb")
    keys = fx.keys_for(40)
    vectors = fx.random_vectors(40, 8)
    vectors[3] *= 2.0  # not L2-normalised: refused by the shard's task, not the planner
    fx.write_run(emb, fx.table(keys, vectors))
    planned = plan(_config(emb, str(tmp_path / "ix"), 2, "Flat"))
    job = ShardJob(planned.tasks[0], planned.trained)
    with pytest.raises(FailedPrecondition, match="not L2-normalised"):
        engines.run_partitioned(planned.parts, route_part, reduce_shard, 2,
                                _engine(engine, request), shared=job)


@pytest.mark.slow
def test_ivf_tuned_to_target_recall_on_real_vectors(tmp_path: Path) -> None:
    n, shards = 20_000, 2
    emb, out = str(tmp_path / "emb"), str(tmp_path / "ix")
    fx.write_run(emb, fx.table(fx.keys_for(n), fx.glove(n)), parts=4)
    top = _built(_config(emb, out, shards, "IVF128,SQ8", tune_queries=300))
    assert top.recall_at_10 is not None and top.recall_at_10 >= 0.95
    assert 1 <= top.search_params["nprobe"] < 128  # tuning chose a real trade-off
    # Independent check on queries the index has never seen, through the server's searcher.
    queries = fx.glove(200, offset=n)
    truth = faiss.IndexFlatIP(50)
    truth.add(fx.glove(n))
    _, exact_rows = truth.search(queries, 10)
    all_ids = np.array([image_id(k) for k in fx.keys_for(n)])
    merged = _merged_topk(out, shards, queries, 10)
    hits = sum(len(set(all_ids[e]) & set(m)) for e, m in zip(exact_rows, merged, strict=True))
    assert hits / exact_rows.size >= 0.93


def _merged_topk(root: str, shards: int, queries: np.ndarray, k: int,
                 params: dict[str, int] | None = None) -> list[list[int]]:
    """Each shard's top-k through the shard server's searcher, merged by (score desc, id asc)."""
    per_shard = []
    for s in range(shards):
        loaded = load_shard(root, s, Expectations())
        per_shard.append(run_search(loaded, queries, k, params or loaded.manifest.search_params))
    merged = []
    for q in range(len(queries)):
        hits = [(float(scores[q, j]), int(ids[q, j])) for scores, ids in per_shard
                for j in range(k) if ids[q, j] >= 0]
        hits.sort(key=lambda h: (-h[0], h[1]))
        merged.append([i for _, i in hits[:k]])
    return merged


@pytest.mark.parametrize("k", [1, 10, 50])
def test_sharded_search_equals_one_flat_index(tmp_path: Path, k: int) -> None:
    n, dim, shards = 3000, 24, 4
    keys = fx.keys_for(n)
    vectors = fx.random_vectors(n, dim, seed=7)
    emb, out = str(tmp_path / "emb"), str(tmp_path / "ix")
    fx.write_run(emb, fx.table(keys, vectors))
    _built(_config(emb, out, shards))
    queries = fx.random_vectors(16, dim, seed=8)  # < 20 queries: the same kernel everywhere
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    scores, rows = flat.search(queries, k)
    ids = np.array([image_id(key) for key in keys])
    expected = [
        [i for _, i in sorted(zip((-scores[q]).tolist(), ids[rows[q]].tolist(), strict=True))]
        for q in range(len(queries))
    ]
    assert _merged_topk(out, shards, queries, k) == expected


def test_cli_builds_and_reports_errors(small_run: tuple[str, list[str], np.ndarray],
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cbir.cli import main

    emb, _, _ = small_run
    out = str(tmp_path / "ix")
    assert main(["build-index", "--embeddings", emb, "--output", out, "--shards", "2",
                 "--engine", "sequential"]) == 0
    assert '"count": 600' in capsys.readouterr().out
    assert main(["build-index", "--embeddings", str(tmp_path / "no"), "--output", out,
                 "--shards", "2", "--engine", "sequential"]) == 2
    assert "_MANIFEST.json not found" in capsys.readouterr().err
