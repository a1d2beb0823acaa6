from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cbir import schema, storage


def read_embeddings(output: str) -> pa.Table:
    """The output as a downstream reader sees it: the dataset at the root."""
    fs, path = storage.filesystem(output)
    return ds.dataset(path, filesystem=fs, format="parquet").to_table().sort_by("key")


def read_errors(output: str) -> dict[str, str]:
    fs, path = storage.filesystem(storage.join(output, schema.ERRORS_DIR))
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist(),
                    strict=True))


def vectors(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


def read_manifest(output: str) -> schema.EmbedManifest:
    return schema.read_manifest(storage.join(output, schema.EMBED_MANIFEST),
                                schema.EmbedManifest)
