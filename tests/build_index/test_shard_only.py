"""``--shard-only K``: one process per shard (a Kubernetes Indexed Job) builds the same index as
one driver, shares one trained quantizer, and only the set's last shard writes the manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cbir import index_layout, storage
from cbir.errors import InvalidArgument
from cbir.schema import IndexManifest, read_manifest
from jobs.build_index.build import BuildConfig, build_index, trained_uri
from jobs.build_index.cli import add_arguments, config_from_args
from tests.build_index import fixtures as fx

SHARDS = 3


def _files(root: str, shard: int) -> tuple[bytes, bytes]:
    return (storage.read_bytes(index_layout.shard_file(root, shard, index_layout.INDEX_FILE)),
            storage.read_bytes(index_layout.shard_file(root, shard, index_layout.IDS_FILE)))


def test_shard_only_builds_match_one_driver_build(tmp_path: Path) -> None:
    emb = str(tmp_path / "emb")
    fx.write_run(emb, fx.table(fx.keys_for(3000), fx.glove(3000)))
    base = BuildConfig(embeddings=emb, output=str(tmp_path / "all"), num_shards=SHARDS,
                       factory="IVF16,Flat", tune_queries=50)
    whole = build_index(base)
    assert whole is not None

    per_pod = dataclasses.replace(base, output=str(tmp_path / "pods"))
    for shard in (2, 0):  # any order, as pods finish
        assert build_index(dataclasses.replace(per_pod, shard_only=shard)) is None
        assert not storage.exists(index_layout.index_manifest_uri(per_pod.output))
    assert storage.exists(trained_uri(per_pod.output, whole.index_version))  # trained once
    top = build_index(dataclasses.replace(per_pod, shard_only=1))
    assert top is not None
    assert read_manifest(index_layout.index_manifest_uri(per_pod.output), IndexManifest) == top
    assert top.index_version == whole.index_version and top.count == whole.count == 3000
    # The shared quantizer (read back, not retrained) gives the same bytes as the driver build.
    for shard in range(SHARDS):
        assert _files(per_pod.output, shard) == _files(base.output, shard)


def test_shard_only_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--embeddings", str(tmp_path), "--output", str(tmp_path / "o"),
                              "--shards", "2", "--shard-only", "2"])
    with pytest.raises(InvalidArgument, match="--shard-only must be in"):
        build_index(config_from_args(args))
