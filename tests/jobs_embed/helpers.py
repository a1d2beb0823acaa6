from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cbir import schema, storage
from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult
from jobs.embed.task import embed_and_commit


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


@dataclass(frozen=True)
class KillOnceAfterCommit:
    """A backfill work function that SIGKILLs its own worker process right after the first
    task (across every worker: the marker is created with O_EXCL) committed its part, as a
    crashed or OOM-killed executor would die. The part name is written into the marker. Spark
    then retries the task, which must find the part committed and skip it."""

    marker: str

    def __call__(self, task: EmbedTask, config: BackfillConfig) -> TaskResult:
        result = embed_and_commit(task, config)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return result  # someone already died once
        os.write(fd, task.part.encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
