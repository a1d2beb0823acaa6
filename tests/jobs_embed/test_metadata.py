"""Per-image metadata from the backfill to a filtered search: moto S3 (user metadata, tags,
content type, last modified), a sidecar table, the real model, the real build, a real shard
server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cbir import storage
from cbir.errors import InvalidArgument
from cbir.ids import image_id
from jobs.build_index.build import BuildConfig, build_index
from jobs.embed.job import JobOptions, build_config, run_backfill
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import serve_in_thread
from tests.jobs_embed.conftest import SEQUENTIAL, config_for, small_image
from tests.jobs_embed.helpers import read_embeddings
from tests.shard_server.conftest import config

LABELS = ["cat", "dog", "cat", "bird", "dog", "cat"]


def put_images(bucket: str) -> list[str]:
    client = storage.s3_client()
    keys = []
    for i, label in enumerate(LABELS):
        key = f"pics/{i:02d}.png"
        client.put_object(Bucket=bucket, Key=key, Body=small_image(i), ContentType="image/png",
                          Metadata={"label": label, "Camera": f"cam{i % 2}"},
                          Tagging=f"team={'red' if i % 3 == 0 else 'blue'}")
        keys.append(key)
    return keys


def sidecar_csv(path: Path, keys: list[str]) -> str:
    lines = ["key,rating,score,reviewed"]
    # keys 0..4 (one as a full URI), not key 5: its sidecar columns are null.
    for i, key in enumerate(keys[:5]):
        name = key if i else f"s3://BUCKET/{key}"
        lines.append(f"{name},{i},{i / 10},{str(i % 2 == 0).lower()}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_backfill_keeps_object_metadata_tags_and_sidecar_and_shards_filter_on_them(
        bucket: str, tmp_path: Path) -> None:
    keys = put_images(bucket)
    sidecar = sidecar_csv(tmp_path / "attrs.csv", keys)
    Path(sidecar).write_text(Path(sidecar).read_text().replace("BUCKET", bucket))
    out = str(tmp_path / "emb")
    cfg = dataclasses.replace(config_for(f"s3://{bucket}/pics", out), with_tags=True,
                              attributes=sidecar, num_shards=2)
    run_backfill(cfg, SEQUENTIAL, show_progress=False)

    table = read_embeddings(out)
    by_key = {k: i for i, k in enumerate(table.column("key").to_pylist())}
    row = by_key[f"s3://{bucket}/pics/00.png"]
    assert table.column("content_type")[row].as_py() == "image/png"
    assert table.column("last_modified")[row].as_py() is not None
    attrs = dict(table.column("attributes")[row].as_py())
    assert attrs == {"label": "cat", "camera": "cam0", "tag_team": "red"}
    assert table.schema.field("rating").type == pa.int64()
    assert table.schema.field("score").type == pa.float64()
    assert table.schema.field("reviewed").type == pa.bool_()
    assert table.column("rating")[by_key[f"s3://{bucket}/pics/05.png"]].as_py() is None
    assert table.column("rating")[row].as_py() == 0  # given as a full s3:// URI

    index = str(tmp_path / "index")
    assert build_index(BuildConfig(out, index, 2, "Flat")) is not None
    meta = pq.read_table(f"{index}/shard=000/metadata.parquet")
    assert {"label", "camera", "tag_team", "rating", "size", "content_type"} <= set(
        meta.column_names)

    text = "label = 'cat' AND tag_team = 'red' OR rating >= 4"
    expected = {image_id(f"s3://{bucket}/{keys[i]}") for i in (0, 4)}  # 0: cat+red, 4: rating
    found: set[int] = set()
    for shard in range(2):
        with serve_in_thread(config(index, shard)) as running, \
                grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = cbir_pb2_grpc.ShardStub(channel).Search(cbir_pb2.ShardSearchRequest(
                vectors=np.zeros(1280, "<f4").tobytes(), dim=1280, k=6, filter=text), timeout=30)
            found |= {i for i in np.frombuffer(reply.ids, "<i8").tolist() if i >= 0}
    assert found == expected


@pytest.mark.parametrize(("content", "message"), [
    ("name,rating\na,1\n", "has no 'key' column"),
    ("key,width\na,1\n", "'width' is a built-in column"),
    ("key,rating\na,1\na,2\n", "keys must be unique"),
])
def test_a_bad_sidecar_is_refused_before_any_work(tmp_path: Path, content: str,
                                                  message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    opts = JobOptions(input="s3://b/p", output=str(tmp_path / "o"), attributes=str(path))
    with pytest.raises(InvalidArgument, match=message):
        build_config(opts)
