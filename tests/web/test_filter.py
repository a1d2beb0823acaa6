"""``filter`` in POST /api/search, through the real system (docs/filters.md)."""

from __future__ import annotations

import httpx
import pyarrow.dataset as ds
import pytest

from cbir import storage
from demo.photos import edited_copies
from tests.web.system import System

pytestmark = pytest.mark.slow


def widths(system: System) -> dict[int, int]:
    """image_id -> width, from the embeddings Parquet the index was built from."""
    fs, path = storage.filesystem(f"s3://{system.bucket}/data/embeddings")
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["image_id", "width"])
    return dict(zip(table.column("image_id").to_pylist(), table.column("width").to_pylist(),
                    strict=True))


def test_filtered_image_upload_hits_all_pass_the_filter(system: System) -> None:
    width_of = widths(system)
    cut = sorted(width_of.values())[len(width_of) // 2]  # about half the photos pass
    crop = dict(edited_copies(system.photos["chelsea"]))["crop"]
    reply = httpx.post(f"{system.url}/api/search", files={"image": ("q.jpg", crop, "image/jpeg")},
                       data={"k": "20", "filter": f"width >= {cut}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    hits = reply.json()["hits"]
    assert hits and all(width_of[h["image_id"]] >= cut for h in hits)
    assert len(hits) == sum(w >= cut for w in width_of.values())


def test_filtered_json_query_and_a_bad_filter(system: System) -> None:
    key = system.keys["horse"]
    body = {"key": key, "k": 5, "filter": f"key LIKE '{key[:-3]}%'"}
    reply = httpx.post(f"{system.url}/api/search", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert [h["key"] for h in reply.json()["hits"]] == [key]
    bad = httpx.post(f"{system.url}/api/search", json={"key": key, "filter": "colour = 'red'"},
                     timeout=60)
    assert bad.status_code == 400 and "unknown column 'colour'" in bad.json()["error"]
