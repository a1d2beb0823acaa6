"""Index versions and manifests.

``index_version`` is a *stable* hash: ``ix-`` + the first 16 hex digits of sha256 over the
embeddings manifest (canonical JSON), the Faiss factory, the shard count and the build settings
that change the result (training sample size, seed, tuning target). Re-running the same build
gives the same version, which is what lets a re-run skip shards that are already committed and
lets a shard server tell two builds of different inputs apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from cbir.index_layout import shard_dir_name
from cbir.schema import EmbedManifest, IndexManifest, ShardManifest

VERSION_PREFIX = "ix-"


def index_version(
    embed: EmbedManifest, factory: str, num_shards: int, settings: Mapping[str, object]
) -> str:
    payload = {
        "embeddings": embed.model_dump(mode="json"),
        "factory": factory,
        "num_shards": num_shards,
        "settings": settings,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{VERSION_PREFIX}{digest[:16]}"


def merged_search_params(shards: Sequence[ShardManifest]) -> dict[str, int]:
    """The index-wide default: per parameter, the largest any shard needed (conservative)."""
    out: dict[str, int] = {}
    for shard in shards:
        for name, value in shard.search_params.items():
            out[name] = max(out.get(name, 0), value)
    return out


def min_recall(shards: Sequence[ShardManifest]) -> float | None:
    values = [s.recall_at_10 for s in shards if s.recall_at_10 is not None and s.count > 0]
    return min(values) if values else None


def index_manifest(
    shards: Sequence[ShardManifest], embeddings_uri: str, embed: EmbedManifest
) -> IndexManifest:
    first = shards[0]
    return IndexManifest(
        index_version=first.index_version,
        num_shards=first.num_shards,
        count=sum(s.count for s in shards),
        dim=first.dim,
        metric=first.metric,
        factory=first.factory,
        search_params=merged_search_params(shards),
        model=embed.model,
        model_version=embed.model_version,
        embeddings=embeddings_uri,
        recall_at_10=min_recall(shards),
        shards=[shard_dir_name(s.shard) for s in sorted(shards, key=lambda s: s.shard)],
    )
