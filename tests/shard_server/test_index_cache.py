"""The workers' shared index files (``--index-cache-dir``): a memory-mapped load answers exactly
like a load into memory (Flat and IVF-SQ8), the process really maps the cached file, an S3
version is downloaded once for every load that follows, and a corrupt file is never
published in the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir import index_layout, storage
from cbir.errors import FailedPrecondition
from shard_server.index_store import Expectations, load_shard
from shard_server.live import live_search
from tests.shard_server.conftest import BuiltIndex


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def _answers(index: BuiltIndex, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_shard(index.root, 0, Expectations(), cache_dir)
    queries = index.vectors[index.shard_rows(0)[:20]]
    return live_search(loaded.index, loaded.live.get(), queries, 5,
                       loaded.manifest.search_params)


@pytest.mark.parametrize("name", ["flat_index", "ivf_index"])
def test_mapped_load_answers_like_a_load_into_memory(name: str, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    index: BuiltIndex = request.getfixturevalue(name)
    in_memory = _answers(index, "")
    cache = tmp_path / "cache"
    loaded = load_shard(index.root, 0, Expectations(), str(cache))
    (version,) = [p for p in cache.iterdir() if p.is_dir()]
    assert version.name == loaded.manifest.checksum
    assert str(version / index_layout.INDEX_FILE) in _mapped_files()  # really mapped
    mapped = _answers(index, str(cache))
    np.testing.assert_array_equal(mapped[1], in_memory[1])
    np.testing.assert_array_equal(mapped[0], in_memory[0])
    assert loaded.index.reconstruct(int(loaded.ids[0])).shape == (loaded.manifest.dim,)


def _upload(local_root: str, uri: str) -> None:
    for path in Path(local_root).rglob("*"):
        if path.is_file():
            rel = path.relative_to(local_root).as_posix()
            storage.write_bytes(storage.join(uri, rel), path.read_bytes())


def test_an_s3_version_is_downloaded_once(flat_index: BuiltIndex, bucket: str,
                                          tmp_path: Path) -> None:
    root = f"s3://{bucket}/indexes/v1"
    _upload(flat_index.root, root)
    cache = str(tmp_path / "cache")
    first = load_shard(root, 1, Expectations(), cache)
    # Gone from S3: the next load (another worker, a restarted one) uses the cached copy.
    storage.delete(storage.join(index_layout.shard_uri(root, 1), index_layout.INDEX_FILE))
    second = load_shard(root, 1, Expectations(), cache)
    assert second.version == first.version and second.manifest.count == first.manifest.count
    np.testing.assert_array_equal(second.ids, first.ids)
    with pytest.raises(Exception, match=r"index\.faiss"):  # without the cache it is really gone
        load_shard(root, 1, Expectations(), "")


def test_a_corrupt_index_is_refused_and_not_cached(flat_index: BuiltIndex,
                                                   tmp_path: Path) -> None:
    copy = tmp_path / "v1"
    shutil.copytree(flat_index.root, copy)
    index_file = Path(index_layout.shard_uri(str(copy), 0)) / index_layout.INDEX_FILE
    data = bytearray(index_file.read_bytes())
    data[-10] ^= 0xFF
    index_file.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(FailedPrecondition, match="checksum"):
        load_shard(str(copy), 0, Expectations(), str(cache))
    assert [p.name for p in cache.iterdir()] == [".lock"]  # nothing published, no staging left
