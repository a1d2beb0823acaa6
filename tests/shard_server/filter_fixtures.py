"""Embeddings runs with metadata of every column type, built into real indexes.

Columns (as the backfill writes them, ``cbir.schema.backfill_schema``): width/height int32,
bytes int64 (-> ``size``), last_modified timestamp, content_type string, the ``attributes``
map (-> ``label`` string, null on some rows), then "sidecar" columns ``pct`` int32 (0..999,
uniform: ``pct < 10 * p`` keeps p %), ``score`` float64 and ``flag`` bool.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cbir import storage
from cbir.ids import image_id
from cbir.schema import EMBED_MANIFEST, backfill_schema, write_manifest
from jobs.build_index.build import BuildConfig, build_index
from tests.build_index import fixtures as fx

LABELS = ("cat", "dog", "bird")
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SIDECAR = pa.schema([pa.field("pct", pa.int32()), pa.field("score", pa.float64()),
                     pa.field("flag", pa.bool_())])


@dataclass(frozen=True)
class MetaIndex:
    root: str
    table: pa.Table  # the embeddings run, every column
    ids: np.ndarray
    vectors: np.ndarray
    version: str
    num_shards: int


def metadata_table(keys: list[str], vectors: np.ndarray, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(keys)
    base = fx.table(keys, vectors)
    days = rng.integers(0, 366, n)
    labels = rng.integers(0, len(LABELS) + 1, n)  # == len(LABELS): no label attribute
    attrs = [[("label", LABELS[i])] if i < len(LABELS) else [] for i in labels.tolist()]
    columns = [
        *base.columns[:4],
        pa.array(rng.integers(32, 2048, n), pa.int32()),
        pa.array(rng.integers(32, 2048, n), pa.int32()),
        pa.array(rng.integers(1_000, 5_000_000, n), pa.int64()),
        pa.array([START + dt.timedelta(days=int(d)) for d in days], pa.timestamp("ms", "UTC")),
        pa.array(np.where(rng.random(n) < 0.7, "image/jpeg", "image/png"), pa.string()),
        pa.array(attrs, pa.map_(pa.string(), pa.string())),
        pa.array(rng.permutation(np.arange(n) % 1000), pa.int32()),
        pa.array(rng.random(n), pa.float64()),
        pa.array(rng.random(n) < 0.5, pa.bool_()),
    ]
    schema = backfill_schema(vectors.shape[1], fx.MODEL, fx.MODEL_VERSION, SIDECAR)
    return pa.Table.from_arrays(columns, schema=schema)


def build_meta_index(tmp: Path, name: str, vectors: np.ndarray, factory: str | None,
                     num_shards: int = 2, seed: int = 0,
                     model_version: str = fx.MODEL_VERSION) -> MetaIndex:
    keys = fx.keys_for(len(vectors), bucket=name)
    table = metadata_table(keys, vectors, seed)
    emb = str(tmp / f"{name}-emb")
    manifest = fx.write_run(emb, table, manifest=False)
    write_manifest(storage.join(emb, EMBED_MANIFEST),
                   manifest.model_copy(update={"model_version": model_version}))
    top = build_index(BuildConfig(emb, str(tmp / name), num_shards, factory, tune_queries=200))
    assert top is not None
    ids = np.array([image_id(k) for k in keys], dtype=np.int64)
    return MetaIndex(str(tmp / name), table, ids, vectors, top.index_version, num_shards)


def brute_force(index: MetaIndex, mask: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """The exact filtered top-k ids (ties by id), computed without cbir's code."""
    rows = np.flatnonzero(mask)
    scores = index.vectors[rows] @ query
    order = np.lexsort((index.ids[rows], -scores))[:k]
    return index.ids[rows][order].tolist()
