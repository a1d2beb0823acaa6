"""The backfill's fetch against the fault-injecting S3 proxy (no Spark, no model): transient
faults are retried and counted, permanent refusals are classified, never retried into a wrong
answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cbir import storage
from cbir.errors import BadImage
from jobs.embed import fetch
from tests.jobs_embed.faulty_s3 import FaultPlan, FaultyS3

LIMIT = 1 << 20


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3]:
    with FaultyS3(s3_endpoint, FaultPlan(rate=0.0, seed=3)) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.url)
        yield running


def test_transient_faults_are_retried_and_counted(bucket: str, proxy: FaultyS3) -> None:
    objects = {f"k{i:03d}": bytes([i]) * (1000 + 37 * i) for i in range(60)}
    for key, data in objects.items():
        storage.write_bytes(f"s3://{bucket}/{key}", data)
    proxy.plan.rate = 0.3
    before = storage.S3_REQUESTS.retries()
    retries = 0
    for key, data in objects.items():
        got, used = fetch.fetch(bucket, key, LIMIT)
        assert got == data
        retries += used
    counts = proxy.plan.counts
    assert all(counts[kind] > 0 for kind in ("slowdown", "internal", "throttle", "reset", "cut"))
    # Every faulted GET cost exactly one retry (botocore's or tenacity's re-GET).
    faulted = sum(counts[k] for k in ("slowdown", "internal", "throttle", "reset", "cut"))
    assert retries == faulted > 0
    assert storage.S3_REQUESTS.retries() - before >= retries - counts["cut"]


def test_permanent_errors_are_not_retried(bucket: str, proxy: FaultyS3) -> None:
    proxy.plan.permanent = {f"{bucket}/denied": (403, "AccessDenied"),
                            f"{bucket}/gone": (404, "NoSuchKey"),
                            f"{bucket}/glacier": (403, "InvalidObjectState")}
    reasons = {}
    for key in ("denied", "gone", "glacier"):
        with pytest.raises(BadImage) as refused:
            fetch.fetch(bucket, key, LIMIT)
        reasons[key] = refused.value.reason
    assert reasons == {"denied": "access_denied", "gone": "missing", "glacier": "unreadable"}
    # One request each: nothing was retried.
    assert proxy.plan.counts["requests"] == 0
    assert sum(v for k, v in proxy.plan.counts.items() if k.startswith("permanent_")) == 3
