"""The pinned index version (pure rule): newest version complete in every shard."""

from __future__ import annotations

from coordinator.versions import HeldVersions, VersionTracker, choose_version

PerShard = dict[int, list[HeldVersions]]


def test_old_version_until_the_new_one_is_complete_then_the_new_one() -> None:
    v1: PerShard = {0: [("a",), ("a",)], 1: [("a",), ("a",)]}
    assert choose_version(v1, 2) == "a"
    rolling: PerShard = {0: [("b", "a"), ("a",)], 1: [("a",), ("a",)]}  # shard 1 has no b yet
    assert choose_version(rolling, 2) == "a"
    complete: PerShard = {0: [("b", "a"), ("a",)], 1: [("a",), ("b", "a")]}
    assert choose_version(complete, 2) == "b"  # newer per the replicas, though a is the majority
    done: PerShard = {0: [("b",), ("b",)], 1: [("b",), ("b",)]}
    assert choose_version(done, 2) == "b"


def test_no_complete_version_or_unknown_shard_gives_none() -> None:
    assert choose_version({0: [("b",)], 1: [("a",)]}, 2) is None
    assert choose_version({0: [("a",)]}, 2) is None


def test_names_do_not_order_versions() -> None:
    # "ix-0..." < "ix-f..." as strings, but the replicas say ix-0 is the newer one.
    per_shard = {0: [("ix-0", "ix-f")], 1: [("ix-0", "ix-f")]}
    assert choose_version(per_shard, 2) == "ix-0"


def test_tracker_uses_only_live_replicas_and_knows_holders() -> None:
    tracker = VersionTracker()
    tracker.report(0, "r1", ["b", "a"])
    tracker.report(0, "r2", ["a"])
    tracker.report(1, "r3", ["a"])
    tracker.report(1, "r4", ["b"])
    assert tracker.choose({0: ["r1", "r2"], 1: ["r3", "r4"]}, 2) == "b"
    assert tracker.choose({0: ["r2"], 1: ["r3", "r4"]}, 2) == "a"  # r1 ejected
    assert tracker.holders(0, "a") == {"r1", "r2"}
    tracker.forget(0, "r1")
    assert tracker.holders(0, "b") == set()
