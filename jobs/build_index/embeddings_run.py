"""Reading the embeddings run: its manifest, the dataset, a bounded training sample, and the
row checks every shard applies (de-duplication, id collisions, normalised vectors).

The ``shard`` column in the Parquet may come from a different shard count, so rows are always
re-assigned with ``image_id % N`` by the partition step (``jobs.build_index.partition``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from cbir import storage
from cbir.errors import FailedPrecondition, IdCollision, NotFound
from cbir.schema import EMBED_MANIFEST, EmbedManifest, read_manifest

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "key", "embedding"]
NORM_TOLERANCE = 1e-3


def read_embed_manifest(uri: str) -> EmbedManifest:
    manifest_uri = storage.join(uri, EMBED_MANIFEST)
    if not storage.exists(manifest_uri):
        raise NotFound(
            f"{manifest_uri} not found: the embeddings run at {uri} is unfinished or not an "
            "embeddings run (the backfill writes _MANIFEST.json last); refusing to build from it"
        )
    return read_manifest(manifest_uri, EmbedManifest)


def open_dataset(uri: str, dim: int) -> ds.Dataset:
    fs, path = filesystem(uri)
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    field = dataset.schema.field("embedding") if "embedding" in dataset.schema.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type):
        raise FailedPrecondition(f"{uri}: no fixed_size_list 'embedding' column")
    if field.type.list_size != dim:
        raise FailedPrecondition(
            f"{uri}: embedding dim {field.type.list_size} != manifest dim {dim}"
        )
    return dataset


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Every read of the run goes through here (a seam the build bench counts bytes at)."""
    return storage.filesystem(uri)


def _row_groups(dataset: ds.Dataset) -> list[tuple[ds.ParquetFileFragment, int, int]]:
    """(fragment, row group id, rows) of every row group: footers only, no data pages."""
    groups: list[tuple[ds.ParquetFileFragment, int, int]] = []
    for fragment in dataset.get_fragments():
        fragment.ensure_complete_metadata()
        groups.extend((fragment, rg.id, rg.num_rows) for rg in fragment.row_groups)
    return groups


def read_sample(dataset: ds.Dataset, dim: int, size: int, seed: int) -> np.ndarray:
    """Exactly ``size`` vectors (all of them if the run is smaller), drawn at random from a
    random subset of row groups: the sample reads ~``size`` rows, not the whole run."""
    rng = np.random.default_rng(seed)
    groups = _row_groups(dataset)
    chosen, rows = [], 0
    for g in rng.permutation(len(groups)):
        if rows >= size:
            break
        chosen.append(groups[int(g)])
        rows += groups[int(g)][2]
    parts = [np.empty((0, dim), np.float32)]
    for fragment, group, _ in sorted(chosen, key=lambda c: (c[0].path, c[1])):
        table = fragment.subset(row_group_ids=[group]).to_table(columns=["embedding"])
        flat = table.column("embedding").combine_chunks().flatten()
        parts.append(flat.to_numpy(zero_copy_only=False).reshape(-1, dim))
    vectors = np.concatenate(parts)
    if len(vectors) > size:
        vectors = vectors[np.sort(rng.choice(len(vectors), size=size, replace=False))]
    return np.ascontiguousarray(vectors, dtype=np.float32)


def first_occurrences(ids: np.ndarray,
                      keys_at: Callable[[np.ndarray], dict[int, str]]) -> np.ndarray:
    """A mask keeping each id's first row: exact duplicate (id, key) rows are dropped, an id
    shared by two keys raises IdCollision. Holds the ids and one sort order; ``keys_at`` fetches
    the keys of the rows whose id repeats (rows by position), so no key table is held."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    same_id = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1
    keep = np.ones(len(ids), dtype=bool)
    if not len(same_id):
        return keep
    keys = keys_at(np.concatenate([order[same_id - 1], order[same_id]]))
    for i in same_id:
        first, other = keys[int(order[i - 1])], keys[int(order[i])]
        if first != other:
            raise IdCollision(
                f"image id {sorted_ids[i]} is shared by {first!r} and {other!r}: "
                "two objects hashed to the same 63-bit id"
            )
    keep[order[same_id]] = False
    log.info("dropped %d exact duplicate rows", len(same_id))
    return keep


def check_vectors(ids: np.ndarray, vectors: np.ndarray, where: str) -> None:
    """The contract says finite, L2-normalised vectors: refuse anything else loudly."""
    if not len(ids):
        return
    squares = np.einsum("ij,ij->i", vectors, vectors)  # one pass; NaN/inf propagate into it
    if not np.isfinite(squares).all() and not np.isfinite(vectors).all():
        raise FailedPrecondition(f"{where}: embeddings contain NaN/inf")
    norms = np.sqrt(squares)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        raise FailedPrecondition(
            f"{where}: {len(bad)} embeddings are not L2-normalised (e.g. id {ids[bad[0]]} "
            f"has norm {norms[bad[0]]:.4f}); inner product would not be cosine"
        )
