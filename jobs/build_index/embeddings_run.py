"""Reading the embeddings run: its manifest, one shard's rows, a training sample.

The ``shard`` column in the Parquet may come from a different shard count, so rows are always
re-assigned with ``image_id % N`` (``cbir.ids.shards_of``). Arrow has no modulo kernel to push
down, so each reader streams every batch of the run (ids, keys and embeddings are all decoded)
and copies out only its own rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cbir import storage
from cbir.errors import FailedPrecondition, IdCollision, NotFound
from cbir.ids import shards_of
from cbir.schema import EMBED_MANIFEST, EmbedManifest, read_manifest

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "key", "embedding"]
NORM_TOLERANCE = 1e-3
SAMPLE_BITS = 32  # sampling uses the id's high bits; shards use the low ones (id % N)


@dataclass(frozen=True)
class Rows:
    ids: np.ndarray  # int64 (n,)
    keys: pa.Array  # string (n,)
    vectors: np.ndarray  # float32 (n, dim), C-contiguous

    def __len__(self) -> int:
        return len(self.ids)


def read_embed_manifest(uri: str) -> EmbedManifest:
    manifest_uri = storage.join(uri, EMBED_MANIFEST)
    if not storage.exists(manifest_uri):
        raise NotFound(
            f"{manifest_uri} not found: the embeddings run at {uri} is unfinished or not an "
            "embeddings run (the backfill writes _MANIFEST.json last); refusing to build from it"
        )
    return read_manifest(manifest_uri, EmbedManifest)


def open_dataset(uri: str, dim: int) -> ds.Dataset:
    fs, path = storage.filesystem(uri)
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    field = dataset.schema.field("embedding") if "embedding" in dataset.schema.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type):
        raise FailedPrecondition(f"{uri}: no fixed_size_list 'embedding' column")
    if field.type.list_size != dim:
        raise FailedPrecondition(
            f"{uri}: embedding dim {field.type.list_size} != manifest dim {dim}"
        )
    return dataset


def _select(dataset: ds.Dataset, dim: int, keep: Callable[[np.ndarray], np.ndarray]) -> Rows:
    ids_parts: list[np.ndarray] = []
    keys_parts: list[pa.Array] = []
    vec_parts: list[np.ndarray] = []
    for batch in dataset.to_batches(columns=COLUMNS):
        ids = batch.column("image_id").to_numpy(zero_copy_only=False).astype(np.int64)
        mask = keep(ids)
        if not mask.any():
            continue
        arrow_mask = pa.array(mask)
        ids_parts.append(ids[mask])
        keys_parts.append(batch.column("key").filter(arrow_mask))
        flat = batch.column("embedding").filter(arrow_mask).flatten()
        vec_parts.append(flat.to_numpy(zero_copy_only=False).reshape(-1, dim))
    if not ids_parts:
        return Rows(np.empty(0, np.int64), pa.array([], pa.string()), np.empty((0, dim), "f4"))
    keys = pa.concat_arrays([k.combine_chunks() if isinstance(k, pa.ChunkedArray) else k
                             for k in keys_parts])
    vectors = np.ascontiguousarray(np.concatenate(vec_parts), dtype=np.float32)
    return Rows(np.concatenate(ids_parts), keys, vectors)


def read_shard(dataset: ds.Dataset, dim: int, shard: int, num_shards: int) -> Rows:
    """This shard's rows, sorted by image id, exact duplicates dropped, collisions refused."""
    rows = _select(dataset, dim, lambda ids: shards_of(ids, num_shards) == shard)
    return dedupe(rows)


def read_sample(dataset: ds.Dataset, dim: int, fraction: float) -> np.ndarray:
    """A deterministic ~``fraction`` sample of vectors (ids are hashes: their bits are uniform)."""
    threshold = int(min(1.0, fraction) * (1 << SAMPLE_BITS))
    return _select(dataset, dim, lambda ids: (ids >> SAMPLE_BITS) < threshold).vectors


def dedupe(rows: Rows) -> Rows:
    """Sort by id; drop exact duplicate (id, key) rows; raise IdCollision on (id, other key)."""
    order = np.argsort(rows.ids, kind="stable")
    ids = rows.ids[order]
    keys = rows.keys.take(pa.array(order)).to_numpy(zero_copy_only=False)
    same_id = np.flatnonzero(ids[1:] == ids[:-1]) + 1
    for i in same_id:
        if keys[i] != keys[i - 1]:
            raise IdCollision(
                f"image id {ids[i]} is shared by {keys[i - 1]!r} and {keys[i]!r}: "
                "two objects hashed to the same 63-bit id"
            )
    keep = np.ones(len(ids), dtype=bool)
    keep[same_id] = False
    if len(same_id):
        log.info("dropped %d exact duplicate rows", len(same_id))
    vectors = np.ascontiguousarray(rows.vectors[order][keep])
    return Rows(ids[keep], pa.array(keys[keep], pa.string()), vectors)


def check_vectors(rows: Rows, where: str) -> None:
    """The contract says finite, L2-normalised vectors: refuse anything else loudly."""
    if not len(rows):
        return
    if not np.isfinite(rows.vectors).all():
        raise FailedPrecondition(f"{where}: embeddings contain NaN/inf")
    norms = np.linalg.norm(rows.vectors, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        raise FailedPrecondition(
            f"{where}: {len(bad)} embeddings are not L2-normalised (e.g. id {rows.ids[bad[0]]} "
            f"has norm {norms[bad[0]]:.4f}); inner product would not be cosine"
        )
