"""Index pointer: atomic flip, validation, the watch decision, and keeping the previous version
for pinned searches after a swap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.cli import main
from cbir.errors import FailedPrecondition, InvalidArgument, NotFound
from shard_server.index_store import Expectations, IndexStore, load_shard
from shard_server.pointer import PointerWatch, read_pointer, write_pointer
from tests.shard_server.conftest import BuiltIndex


def test_write_and_read(flat_index: BuiltIndex, tmp_path: Path) -> None:
    pointer = str(tmp_path / "CURRENT")
    write_pointer(pointer, flat_index.root)
    assert read_pointer(pointer) == flat_index.root
    with pytest.raises(NotFound, match="not a committed index"):
        write_pointer(pointer, str(tmp_path / "nothing"))
    assert read_pointer(pointer) == flat_index.root  # a refused flip changes nothing
    Path(pointer).write_text("a\nb\n")
    with pytest.raises(InvalidArgument):
        read_pointer(pointer)


def test_cli(flat_index: BuiltIndex, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pointer = str(tmp_path / "CURRENT")
    assert main(["index-pointer", "set", pointer, "--to", flat_index.root]) == 0
    assert main(["index-pointer", "get", pointer]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == flat_index.root
    assert main(["index-pointer", "set", pointer, "--to", str(tmp_path / "x")]) == 2


def test_watch_retries_a_refused_target_only_later() -> None:
    watch = PointerWatch(retry_failed_s=60)
    watch.loaded("v1")
    assert not watch.wants("v1")
    assert watch.wants("v2")
    watch.failed("v2", now=100)
    assert not watch.wants("v2", now=110)
    assert watch.wants("v2", now=161)
    assert watch.wants("v3", now=110)


def test_store_keeps_previous_for_pinned_searches(flat_index: BuiltIndex,
                                                  flat_index_v2: BuiltIndex) -> None:
    clock = [0.0]
    store = IndexStore(clock=lambda: clock[0])
    none = Expectations()
    v1, v2 = load_shard(flat_index.root, 0, none), load_shard(flat_index_v2.root, 0, none)
    store.swap(v1, 30)
    store.swap(v2, 30)
    assert store.held_versions() == [v2.version, v1.version]
    assert store.get(v1.version) is v1 and store.get("") is v2
    clock[0] = 31
    assert store.held_versions() == [v2.version]
    with pytest.raises(FailedPrecondition):
        store.get(v1.version)
    assert np.array_equal(store.get(v2.version).ids, v2.ids)
