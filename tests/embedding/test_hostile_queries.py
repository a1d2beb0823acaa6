"""Issue 16 through a real coordinator process (real model, real shard server, gRPC on
127.0.0.1): four concurrent hostile image queries are refused with INVALID_ARGUMENT naming the
limit, the coordinator's peak RSS (VmHWM from /proc, reset first) grows by less than 300 MB,
it stays SERVING, and a real photo still finds results afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.embed_cluster import ImageCluster, image_cluster, reset_peak_rss, rss_kib
from cbir.client import CoordinatorClient
from cbir.errors import InvalidArgument
from demo.photos import bundled_photos, encode_jpeg
from tests.fuzz.inputs import hostile_queries

pytestmark = pytest.mark.slow
BUDGET_MIB = 300


@pytest.fixture(scope="module")
def cluster() -> Iterator[ImageCluster]:
    with image_cluster(num_images=64) as c:
        yield c


def _query(address: str, image: bytes) -> BaseException | None:
    with CoordinatorClient(address, timeout_s=60) as client:
        try:
            client.search_image(image, k=5)
        except BaseException as exc:
            return exc
    return None


@pytest.mark.parametrize("name", ["png16_8000", "rgba_8000", "gif_screen_8000", "eps"])
def test_four_concurrent_hostile_queries_stay_in_budget(cluster: ImageCluster, name: str) -> None:
    image = hostile_queries()[name]
    pid = cluster.coordinator_pid
    reset_peak_rss(pid)
    before = rss_kib(pid)
    with ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(lambda _: _query(cluster.address, image), range(4)))
    grew_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    for exc in errors:
        assert isinstance(exc, InvalidArgument), repr(exc)
        limit = "accepted formats" if name == "eps" else "max_query_image_pixels"
        assert limit in str(exc)
    assert grew_mib < BUDGET_MIB, f"4 x {name}: peak RSS +{grew_mib:.0f} MiB"
    cluster.procs.check_alive()


def test_still_serving_and_answering_after_hostile_queries(cluster: ImageCluster) -> None:
    from cbir.rpc.health import wait_serving

    _query(cluster.address, hostile_queries()["png16_8000"])
    wait_serving(cluster.address, "cbir.v1.Coordinator", 10.0)
    jpeg = encode_jpeg(bundled_photos()[0].pixels)
    with CoordinatorClient(cluster.address, timeout_s=60) as client:
        result = client.search_image(jpeg, k=5)
    assert len(result.hits) == 5 and not result.partial
