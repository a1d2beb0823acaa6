"""A shard that receives no rows (a small run, an unlucky spread of ids) still holds every
metadata column of the run, so a filter valid on one shard is valid on all of them: before, an
empty shard's metadata held only ``image_id`` and a filter on ``width`` failed the whole query
with INVALID_ARGUMENT."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq

from cbir import index_layout
from cbir.ids import image_id
from jobs.build_index.build import BuildConfig, build_index
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import serve_in_thread
from tests.build_index import fixtures as fx
from tests.shard_server.conftest import config


def test_an_empty_shard_keeps_the_runs_metadata_columns_and_answers_filters(
        tmp_path: Path) -> None:
    keys = [k for k in fx.keys_for(400) if image_id(k) % 2 == 0][:60]  # all of them: shard 0
    run, index = str(tmp_path / "run"), str(tmp_path / "index")
    fx.write_run(run, fx.table(keys, fx.random_vectors(len(keys), 16)))
    assert build_index(BuildConfig(run, index, 2, "Flat")) is not None

    def columns(shard: int) -> list[str]:
        path = Path(index_layout.shard_uri(index, shard)) / index_layout.METADATA_FILE
        return pq.read_schema(path).names

    assert pq.read_table(Path(index_layout.shard_uri(index, 1)) / index_layout.IDS_FILE
                         ).num_rows == 0
    assert columns(1) == columns(0) and "width" in columns(1)
    request = cbir_pb2.ShardSearchRequest(vectors=np.ones(16, "<f4").tobytes(), dim=16, k=5,
                                          filter="width >= 10 AND size > 0")
    hits = {}
    for shard in (0, 1):
        with serve_in_thread(config(index, shard)) as running, \
                grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = cbir_pb2_grpc.ShardStub(channel).Search(request, timeout=30)
        hits[shard] = [i for i in np.frombuffer(reply.ids, "<i8") if i >= 0]
    assert len(hits[0]) == 5 and hits[1] == []
