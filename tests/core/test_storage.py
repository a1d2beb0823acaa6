from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
)

from cbir import storage
from cbir.errors import (
    FailedPrecondition,
    InvalidArgument,
    NoSuchObject,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)


def test_parse_s3() -> None:
    loc = storage.parse_s3("s3://bkt/a/b.jpg")
    assert (loc.bucket, loc.key, loc.uri) == ("bkt", "a/b.jpg", "s3://bkt/a/b.jpg")
    with pytest.raises(InvalidArgument):
        storage.parse_s3("s3:///nobucket")
    with pytest.raises(InvalidArgument):
        storage.parse_s3("/local/path")


def test_local_roundtrip_is_atomic_and_lists(tmp_path: Path) -> None:
    target = str(tmp_path / "d" / "x.bin")
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert storage.exists(target)
    assert list(storage.list_names(str(tmp_path))) == ["d/x.bin"]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp files left behind
    with pytest.raises(NotFound):
        storage.read_bytes(str(tmp_path / "missing"))


def test_s3_roundtrip_through_real_endpoint(bucket: str) -> None:
    base = f"s3://{bucket}/prefix"
    for i in range(3):
        storage.write_bytes(storage.join(base, f"k{i}.bin"), bytes([i]))
    assert sorted(storage.list_names(base)) == ["k0.bin", "k1.bin", "k2.bin"]
    assert storage.read_bytes(f"{base}/k2.bin") == b"\x02"
    assert storage.exists(f"{base}/k1.bin") and not storage.exists(f"{base}/nope")
    with pytest.raises(NotFound):
        storage.read_bytes(f"{base}/nope")


def test_pyarrow_parquet_on_s3(bucket: str) -> None:
    fs, path = storage.filesystem(f"s3://{bucket}/t/part.parquet")
    table = pa.table({"a": [1, 2, 3]})
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_s3_client_is_shared_per_endpoint(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = storage.s3_client()
    assert storage.s3_client() is first  # built once, not per call
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    other = storage.s3_client()
    assert other is not first and other.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert storage.s3_client() is first


# --- storage owns S3: the verbs, and one translation of every S3/botocore error -------------


def _client_error(code: str, operation: str = "ListObjectsV2") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}}, operation)


@pytest.mark.parametrize(("exc", "kind", "says"), [
    (_client_error("NoSuchBucket"), NotFound, "op: bucket does not exist"),
    (_client_error("NoSuchKey", "GetObject"), NoSuchObject, "op: no such object"),
    (_client_error("404", "HeadObject"), NoSuchObject, "op: no such object"),
    (_client_error("AccessDenied"), PermissionDenied, "op: access denied"),
    (_client_error("InvalidAccessKeyId"), Unauthenticated, "credentials were refused"),
    (_client_error("SignatureDoesNotMatch"), Unauthenticated, "credentials were refused"),
    (_client_error("InvalidObjectState", "GetObject"), FailedPrecondition, "not readable"),
    (_client_error("404", "ListObjectsV2"), Unavailable, "without an S3 error"),
    (_client_error("SlowDown"), Unavailable, "S3 error SlowDown"),
    (NoCredentialsError(), Unauthenticated, "no AWS credentials found"),
    (EndpointConnectionError(endpoint_url="http://h:1"), Unavailable, "cannot reach"),
    (ConnectionClosedError(endpoint_url="http://h:1"), Unavailable, "did not answer like S3"),
    (RecursionError(), Unavailable, "did not answer like S3"),
])
def test_translate_gives_each_failure_its_own_typed_error(
    exc: BaseException, kind: type[Exception], says: str
) -> None:
    err = storage.translate(exc, "op")
    assert type(err) is kind and says in str(err)
    assert not isinstance(err, NotFound) or kind in (NotFound, NoSuchObject)


def test_access_denied_is_not_not_found(bucket: str, s3_endpoint: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.jobs_embed.faulty_s3 import FaultPlan, FaultyS3

    storage.write_bytes(f"s3://{bucket}/secret", b"x")
    plan = FaultPlan(rate=0.0, seed=1, permanent={f"{bucket}/secret": (403, "AccessDenied")})
    with FaultyS3(s3_endpoint, plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(PermissionDenied, match="access denied"):
            storage.read_bytes(f"s3://{bucket}/secret")


def test_endpoint_must_have_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "minio:9000")
    with pytest.raises(InvalidArgument, match=r"give the scheme, e\.g\. http://minio:9000"):
        storage.endpoint_url()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(InvalidArgument, match="use path, virtual or auto"):
        storage.addressing_style()
    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "path")
    assert storage.addressing_style() == "path"


def test_listing_pages_with_sizes_and_etags(bucket: str) -> None:
    for i in range(5):
        storage.write_bytes(f"s3://{bucket}/p/k{i}", b"x" * (i + 1))
    storage.write_bytes(f"s3://{bucket}/other", b"no")
    found = list(storage.list_objects(f"s3://{bucket}/p", page_size=2))  # 3 pages
    assert [(o.key, o.size) for o in found] == [(f"p/k{i}", i + 1) for i in range(5)]
    assert all(len(o.etag) == 32 for o in found)  # md5 hex of a single-part PUT


def test_read_prefix_reads_at_most_the_limit(bucket: str) -> None:
    uri = f"s3://{bucket}/grown"
    storage.write_bytes(uri, b"a" * 1000)
    got = storage.read_prefix(uri, 100)
    assert (len(got.data), got.size, got.data) == (101, 1000, b"a" * 101)
    small = storage.read_prefix(uri, 5000)
    assert (len(small.data), small.size) == (1000, 1000)


def test_download_and_writability(bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"s3://{bucket}/d/file", b"payload")
    dest = tmp_path / "file"
    storage.download(f"s3://{bucket}/d/file", str(dest))
    assert dest.read_bytes() == b"payload"
    with pytest.raises(NoSuchObject):
        storage.download(f"s3://{bucket}/d/nope", str(tmp_path / "nope"))
    storage.check_writable(f"s3://{bucket}/out")
    assert list(storage.list_names(f"s3://{bucket}/out")) == []  # the probe is gone
    with pytest.raises(NotFound, match="output s3://no-such-bkt-q/o: bucket does not exist"):
        storage.check_writable("s3://no-such-bkt-q/o")
    (tmp_path / "f").write_text("x")
    with pytest.raises(PermissionDenied, match="is not writable"):
        storage.check_writable(str(tmp_path / "f" / "out"))
