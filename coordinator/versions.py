"""Which index version a query is pinned to (pure: no grpc, no asyncio).

Every replica reports the versions it can answer for (``Stats.held_versions``: the serving one
first, then the previous one it keeps for a grace period after a swap). A query is pinned to
the NEWEST version that every shard has at least one live replica for, so during a roll the
coordinator keeps answering from the old version until the new one is complete in every
shard, then moves every query to the new one at once - never mixing versions, never leaving a
shard out.

"Newest" comes from the replicas themselves, not from version names (they are content hashes):
a replica serving ``b`` while keeping ``a`` says ``b`` is newer than ``a``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

HeldVersions = tuple[str, ...]  # serving version first


def newer_pairs(held: Iterable[HeldVersions]) -> set[tuple[str, str]]:
    """(newer, older) pairs: each replica's serving version is newer than what it keeps."""
    pairs = set()
    for versions in held:
        for older in versions[1:]:
            if older != versions[0]:
                pairs.add((versions[0], older))
    return pairs


def complete_versions(per_shard: Mapping[int, Iterable[HeldVersions]], num_shards: int) -> set[str]:
    """Versions held by at least one (live) replica of every shard."""
    common: set[str] | None = None
    for shard in range(num_shards):
        have = {v for versions in per_shard.get(shard, ()) for v in versions}
        common = have if common is None else common & have
        if not common:
            return set()
    return common or set()


def choose_version(per_shard: Mapping[int, Sequence[HeldVersions]], num_shards: int) -> str | None:
    """The newest complete version, or None when no version is complete (the caller then falls
    back to asking unpinned). Ties (no replica orders them) go to the version most replicas
    serve, then the greatest name, so every coordinator picks the same one."""
    complete = complete_versions(per_shard, num_shards)
    if not complete:
        return None
    all_held = [versions for replicas in per_shard.values() for versions in replicas]
    pairs = newer_pairs(all_held)
    newest = [v for v in complete if not any((u, v) in pairs for u in complete if u != v)]
    serving = Counter(versions[0] for versions in all_held if versions)
    return max(newest or complete, key=lambda v: (serving[v], v))


class VersionTracker:
    """What each replica last reported; updated by the coordinator's Stats polling."""

    def __init__(self) -> None:
        self.held: dict[tuple[int, str], HeldVersions] = {}
        # Bumped on every change, so the per-query choice can be cached between changes.
        self.generation = 0

    def report(self, shard: int, address: str, versions: Iterable[str]) -> None:
        held = tuple(dict.fromkeys(v for v in versions if v))
        if self.held.get((shard, address)) != held:
            self.held[(shard, address)] = held
            self.generation += 1

    def forget(self, shard: int, address: str) -> None:
        if self.held.pop((shard, address), None) is not None:
            self.generation += 1

    def holders(self, shard: int, version: str) -> set[str]:
        return {a for (s, a), versions in self.held.items() if s == shard and version in versions}

    def choose(self, live: Mapping[int, Iterable[str]], num_shards: int) -> str | None:
        """The pinned version given the live replicas' addresses per shard."""
        per_shard = {
            shard: [self.held[(shard, a)] for a in addresses if (shard, a) in self.held]
            for shard, addresses in live.items()
        }
        return choose_version(per_shard, num_shards)
