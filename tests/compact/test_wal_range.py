"""``ShardLog.read_range``: exactly the asked range, in log order, however the parallel reads
are chunked; a gap inside the range fails instead of shortening it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir import storage, wal
from cbir.errors import FailedPrecondition
from cbir.wal import Delete, ShardLog


def test_reads_exactly_the_range_in_order(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "READ_CHUNK", 7)  # several chunks, one partial
    log = ShardLog(str(tmp_path / "wal"), 1)
    for i in range(40):
        assert log.append([Delete(2 * i + 1)], "mv") == i + 1
    got = list(log.read_range(3, 33, threads=4))
    assert [e.seq for e in got] == list(range(4, 34))
    assert [e.operations[0].image_id for e in got] == [2 * i + 1 for i in range(3, 33)]
    assert list(log.read_range(40, 40)) == []
    storage.delete(log.uri_of(20))
    with pytest.raises(FailedPrecondition, match="entry 20 is missing"):
        list(log.read_range(3, 33))
    assert [e.seq for e in log.read_range(20, 25)] == list(range(21, 26))
