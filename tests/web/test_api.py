"""The HTTP/JSON API through real servers: S3 (moto), backfill, index build, shard servers,
the coordinator with the real model, and the web app under uvicorn."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from cbir import storage
from cbir.ids import image_id
from demo.photos import edited_copies
from tests.web.system import System

pytestmark = pytest.mark.slow


def _post_image(system: System, data: bytes, k: int = 3) -> httpx.Response:
    return httpx.post(f"{system.url}/api/search", files={"image": ("q.jpg", data, "image/jpeg")},
                      data={"k": str(k)}, timeout=60)


def _search(system: System, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{system.url}/api/search", json=body, timeout=60)


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee"])
def test_an_edited_photo_finds_its_original_first(system: System, name: str) -> None:
    crop = dict(edited_copies(system.photos[name]))["crop"]
    reply = _post_image(system, crop, k=4)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    top = answer["hits"][0]
    assert top["key"] == system.keys[name]
    assert top["image_id"] == image_id(system.keys[name])
    assert top["image_id_str"] == str(image_id(system.keys[name]))
    assert top["thumbnail_url"] == f"/api/images/{top['image_id']}?size=thumb"
    assert top["shard"] == top["image_id"] % 2
    assert len(answer["hits"]) == 4
    scores = [h["score"] for h in answer["hits"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.8
    assert answer["partial"] is False and answer["failed_shards"] == []
    assert answer["timing"]["total_ms"] > 0 and answer["index_version"]


def test_query_by_id_as_number_string_and_key(system: System) -> None:
    key = system.keys["horse"]
    wanted = image_id(key)
    by_number = _search(system, {"image_id": wanted, "k": 3}).json()
    by_string = _search(system, {"image_id": str(wanted), "k": 3}).json()
    by_key = _search(system, {"key": key, "k": 3}).json()
    assert by_number["hits"][0]["image_id_str"] == str(wanted)
    assert by_number["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert by_number["hits"] == by_string["hits"] == by_key["hits"]
    excluded = _search(system, {"image_id": str(wanted), "k": 3,
                                "exclude_query_image": True}).json()
    assert str(wanted) not in [h["image_id_str"] for h in excluded["hits"]]
    assert excluded["hits"] == by_number["hits"][1:] + excluded["hits"][2:]


def test_query_by_vector_returns_the_image_it_came_from(system: System) -> None:
    fs, path = storage.filesystem(f"s3://{system.bucket}/data/embeddings")
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    row = table.column("key").to_pylist().index(system.keys["camera"])
    vector = np.asarray(table.column("embedding")[row].as_py(), dtype=np.float32)
    reply = _search(system, {"vector": vector.tolist(), "k": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["hits"][0]["key"] == system.keys["camera"]
    wrong_dim = _search(system, {"vector": [0.5, 0.5], "k": 2})
    assert wrong_dim.status_code == 400 and "dim" in wrong_dim.json()["error"]


def test_a_key_or_id_that_is_not_indexed_is_404(system: System) -> None:
    secret = f"s3://{system.bucket}/secret/not-indexed.jpg"
    bodies: list[dict[str, object]] = [{"key": secret}, {"image_id": image_id(secret)}]
    for body in bodies:
        reply = _search(system, body)
        assert reply.status_code == 404, reply.text
        assert "image id" in reply.json()["error"] and reply.json()["status"] == 404


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"this is a text file, not a JPEG", 400, "not_an_image"),
    (b"", 400, "empty"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 100, 400, "image"),
])
def test_bad_uploads_get_a_json_4xx(system: System, body: bytes, status: int,
                                    message: str) -> None:
    reply = _post_image(system, body)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert message in reply.json()["error"]


def test_a_too_large_upload_is_413_declared_or_streamed(system: System) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024)
    reply = _post_image(system, big)
    assert reply.status_code == 413 and "larger than" in reply.json()["error"]

    def chunks() -> object:  # no Content-Length: counted while it streams in
        for _ in range(22):
            yield b"\0" * (1024 * 1024)

    streamed = httpx.post(f"{system.url}/api/search", content=chunks(),  # type: ignore[arg-type]
                          headers={"content-type": "application/json"}, timeout=60)
    assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]
    assert httpx.get(f"{system.url}/healthz").status_code == 200  # still serving


@pytest.mark.parametrize(("body", "message"), [
    ({"image_id": 1, "key": "s3://b/k"}, "exactly one"),
    ({}, "exactly one"),
    ({"key": "file:///etc/passwd"}, "s3://"),
    ({"image_id": -5}, "image_id"),
    ({"image_id": "abc"}, "image_id"),
    ({"vector": [1.0], "k": 0}, "k must be"),
    ({"vector": [1.0], "k": 100000}, "k must be"),
    ({"vector": [1.0], "path": "/etc"}, "path"),
])
def test_bad_json_queries_get_400_with_a_message(system: System, body: dict[str, object],
                                                 message: str) -> None:
    reply = _search(system, body)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_other_malformed_requests_get_400(system: System) -> None:
    not_json = httpx.post(f"{system.url}/api/search", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "invalid JSON" in not_json.json()["error"]
    plain = httpx.post(f"{system.url}/api/search", content=b"x",
                       headers={"content-type": "text/plain"})
    assert plain.status_code == 400 and "multipart" in plain.json()["error"]
    no_file = httpx.post(f"{system.url}/api/search", files={"other": ("a", b"b")})
    assert no_file.status_code == 400 and "'image'" in no_file.json()["error"]


def test_thumbnails_and_full_images_of_indexed_ids(system: System) -> None:
    key = system.keys["astronaut"]
    wanted = image_id(key)
    thumb = httpx.get(f"{system.url}/api/images/{wanted}?size=thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 256
    full = httpx.get(f"{system.url}/api/images/{wanted}?size=full")
    loc = storage.parse_s3(key)
    stored = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    assert full.status_code == 200 and full.content == stored
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["x-content-type-options"] == "nosniff"
    before = system.web.app.state.images.thumbs.hits
    again = httpx.get(f"{system.url}/api/images/{wanted}")
    assert again.content == thumb.content
    assert system.web.app.state.images.thumbs.hits == before + 1


@pytest.mark.parametrize(("path", "status"), [
    ("/api/images/{secret}?size=full", 404),
    ("/api/images/{secret}?size=thumb", 404),
    ("/api/images/-1", 404),
    (f"/api/images/{2**64}", 404),
    ("/api/images/abc", 400),
    ("/api/images/{indexed}?size=../../secret/not-indexed.jpg", 400),
    ("/api/images/..%2F..%2Fsecret%2Fnot-indexed.jpg", 404),
    ("/api/images/%2e%2e/secret/not-indexed.jpg", 404),
])
def test_no_request_parameter_reaches_s3_except_indexed_keys(
        system: System, path: str, status: int) -> None:
    secret = image_id(f"s3://{system.bucket}/secret/not-indexed.jpg")
    indexed = image_id(system.keys["coins"])
    fetched: list[str] = []

    def record(params: dict[str, object], **_: object) -> None:
        fetched.append(str(params.get("Key")))

    client = storage.s3_client()
    client.meta.events.register("before-parameter-build.s3.GetObject", record)
    try:
        url = system.url + path.format(secret=secret, indexed=indexed)
        reply = httpx.get(url)
        assert reply.status_code == status, reply.text
        assert reply.json()["status"] == status
        ok = httpx.get(f"{system.url}/api/images/{indexed}?size=full")
        assert ok.status_code == 200
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", record)
    indexed_keys = {storage.parse_s3(k).key for k in system.keys.values()}
    assert fetched and set(fetched) <= indexed_keys, fetched


def test_info_openapi_metrics_and_health(system: System) -> None:
    info = httpx.get(f"{system.url}/api/info").json()
    assert info["num_shards"] == 2 and info["live_replicas"] == {"0": 1, "1": 1}
    assert info["shards_without_replicas"] == []
    assert info["total_images"] == len(system.keys) == sum(info["images"].values())
    assert set(info["images"]) == {"0", "1"}
    assert info["index_version"] and info["model"] == "efficientnet_lite0" and info["dim"] == 1280
    schema = httpx.get(f"{system.url}/api/openapi.json").json()
    assert {"/api/search", "/api/images/{image_id}", "/api/info"} <= set(schema["paths"])
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert httpx.get(f"{system.url}/docs").status_code == 404  # no CDN-backed Swagger UI
    assert httpx.get(f"{system.url}/healthz").json() == {"status": "ok"}
    metrics = httpx.get(f"{system.url}/metrics").text
    assert 'cbir_web_requests_total{method="GET",route="/api/info",status="200"}' in metrics
    page = httpx.get(system.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "//" not in page.text.replace("http://www.w3.org", "")  # no external assets
