"""The backfill through real parts: moto's S3 endpoint, real Parquet, the real default model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cbir import ids, schema, storage
from cbir.embedding import load_embedder
from cbir.errors import FailedPrecondition, ModelMismatch
from cbir.limits import Limits
from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult
from jobs.embed.job import run_backfill
from jobs.embed.plan import scan_output
from jobs.embed.task import embed_and_commit
from tests.jobs_embed.conftest import (
    SEQUENTIAL,
    ImageBucket,
    config_for,
    put,
    small_image,
)
from tests.jobs_embed.helpers import read_embeddings, read_errors, read_manifest, vectors


def _out(bucket: str) -> str:
    return f"s3://{bucket}/out/embeddings"  # inside the input bucket: must not be re-embedded


def test_backfill_writes_embeddings_errors_and_manifest(image_bucket: ImageBucket) -> None:
    b = image_bucket.bucket
    config = config_for(f"s3://{b}", _out(b))
    manifest = run_backfill(config, SEQUENTIAL, show_progress=False)

    table = read_embeddings(config.output)  # _errors/ and _MANIFEST.json are ignored by pyarrow
    expected_keys = sorted(f"s3://{b}/{k}" for k in image_bucket.good)
    assert table.column("key").to_pylist() == expected_keys
    assert table.schema.field("embedding").type.list_size == 1280
    assert table.schema.metadata[schema.META_MODEL_VERSION].decode() == config.model_version
    assert table.column("image_id").to_pylist() == [ids.image_id(k) for k in expected_keys]
    assert table.column("shard").to_pylist() == [ids.image_id(k) % 3 for k in expected_keys]
    assert read_errors(config.output) == {f"s3://{b}/{k}": r for k, r in image_bucket.bad.items()}
    assert (manifest.num_images, manifest.num_errors) == (len(image_bucket.good),
                                                          len(image_bucket.bad))
    assert read_manifest(config.output) == manifest
    assert len(manifest.parts) == -(-len(image_bucket.objects) // 4)

    # The query path (Embedder on the same bytes) gives the vector that is in the Parquet.
    emb = load_embedder("efficientnet_lite0", device="cpu")
    keys = sorted(image_bucket.good)
    direct = emb.embed_bytes([image_bucket.objects[k] for k in keys])
    assert not direct.failures
    assert np.abs(vectors(table) - direct.vectors).max() < 1e-5
    by_key = dict(zip(table.column("key").to_pylist(), vectors(table), strict=True))
    rotated, upright = by_key[f"s3://{b}/odd/cat_exif_rotated.png"], by_key[
        f"s3://{b}/odd/cat_upright.png"]
    assert np.abs(rotated - upright).max() < 1e-5
    sizes = dict(zip(table.column("key").to_pylist(), table.column("width").to_pylist(),
                     strict=True))
    assert sizes[f"s3://{b}/odd/cat_exif_rotated.png"] == 200


def test_rerun_adds_nothing_and_incremental_embeds_only_new(
    image_bucket: ImageBucket, tmp_path: Path
) -> None:
    b = image_bucket.bucket
    config = config_for(f"s3://{b}/photos", str(tmp_path))  # a prefix and a local output
    first = run_backfill(config, SEQUENTIAL, show_progress=False)
    assert first.num_images == 4

    again = run_backfill(config, SEQUENTIAL, show_progress=False)
    extra = again.model_extra or {}
    assert (extra["tasks_run"], extra["parts_reused"]) == (0, len(first.parts))
    assert again.num_images == 4
    assert again.parts == first.parts

    put(b, "photos/new1.png", small_image(1))
    put(b, "photos/new2.png", small_image(2))
    put(b, "elsewhere/not_in_prefix.png", small_image(3))
    third = run_backfill(config, SEQUENTIAL, show_progress=False)
    extra = third.model_extra or {}
    assert (extra["images_this_run"], third.num_images) == (2, 6)
    assert set(first.parts) < set(third.parts)
    keys = read_embeddings(config.output).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 6


def test_resume_after_a_crash_redoes_only_uncommitted_work(image_bucket: ImageBucket,
                                                           tmp_path: Path) -> None:
    b = image_bucket.bucket
    config = config_for(f"s3://{b}", str(tmp_path))
    first = run_backfill(config, SEQUENTIAL, show_progress=False)
    # A crash: one task never committed and the manifest was never written.
    lost = next(p for p in first.parts if f"{schema.ERRORS_DIR}/{p}" not in first.error_parts)
    lost_rows = read_embeddings(config.output).num_rows
    storage.delete(storage.join(config.output, lost))
    storage.delete(storage.join(config.output, schema.EMBED_MANIFEST))
    resumed = run_backfill(config, SEQUENTIAL, show_progress=False)
    extra = resumed.model_extra or {}
    assert extra["parts_written"] == 1 and extra["parts_reused"] == len(first.parts) - 1
    assert resumed.num_images == first.num_images
    assert read_embeddings(config.output).num_rows == lost_rows


def test_committed_task_is_skipped_not_redone(image_bucket: ImageBucket, tmp_path: Path
                                              ) -> None:
    from jobs.embed import plan

    b = image_bucket.bucket
    config = config_for(f"s3://{b}/photos", str(tmp_path))
    tasks = plan.make_tasks(b, plan.list_objects(config.input), set(), 4)
    first = embed_and_commit(tasks[0], config)
    retry = embed_and_commit(tasks[0], config)  # e.g. Spark re-running a task after its commit
    assert first.written and not retry.written
    assert retry.num_images == first.num_images == 4


def test_changed_model_on_existing_output_is_refused(image_bucket: ImageBucket,
                                                     tmp_path: Path) -> None:
    b = image_bucket.bucket
    config = config_for(f"s3://{b}/photos", str(tmp_path))
    run_backfill(config, SEQUENTIAL, show_progress=False)
    with pytest.raises(FailedPrecondition, match="written with --num-shards 3, not 5"):
        run_backfill(dataclasses.replace(config, num_shards=5), SEQUENTIAL,
                     show_progress=False)
    other = dataclasses.replace(config, model_version="0123456789abcdef")
    with pytest.raises(ModelMismatch, match="model version"):
        run_backfill(other, SEQUENTIAL, show_progress=False)
    # Without the manifest the parts' own metadata still tells.
    storage.delete(storage.join(config.output, schema.EMBED_MANIFEST))
    assert scan_output(config.output).model_versions == {config.model_version}
    with pytest.raises(ModelMismatch):
        run_backfill(other, SEQUENTIAL, show_progress=False)


@dataclasses.dataclass(frozen=True)
class _GrowAfterListing:
    """A work function that overwrites one object with a much larger one after the driver
    listed it, then runs the real task."""

    uri: str
    size: int

    def __call__(self, task: EmbedTask, config: BackfillConfig) -> TaskResult:
        storage.write_bytes(self.uri, b"\xff" * self.size)
        return embed_and_commit(task, config)


def test_object_grown_after_listing_is_too_large_without_reading_it(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        put(bucket, f"img/{i}.png", small_image(i))
    limit = 60_000
    grown = f"s3://{bucket}/img/1.png"
    listed = len(small_image(1))
    config = dataclasses.replace(config_for(f"s3://{bucket}/img", str(tmp_path)),
                                 limits=Limits(max_image_bytes=limit))
    read_sizes: list[int] = []
    real_read = storage.read_prefix

    def recording(uri: str, max_bytes: int) -> storage.Prefix:
        got = real_read(uri, max_bytes)
        read_sizes.append(len(got.data))
        return got

    monkeypatch.setattr(storage, "read_prefix", recording)
    manifest = run_backfill(config, SEQUENTIAL, show_progress=False,
                            work_fn=_GrowAfterListing(grown, 4 * 1024 * 1024))
    assert manifest.num_images == 2 and read_errors(config.output) == {grown: "too_large"}
    fs, path = storage.filesystem(storage.join(config.output, schema.ERRORS_DIR))
    detail = pq.read_table(path, filesystem=fs).column("detail").to_pylist()[0]
    assert detail == f"{4 * 1024 * 1024} bytes > limit {limit} (listed as {listed} bytes)"
    assert max(read_sizes) == limit + 1  # never the whole 4 MiB
