"""Object storage: one API over local paths and ``s3://`` URIs.

S3 endpoint and credentials come from the standard AWS chain; ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) points boto3 and pyarrow at MinIO, moto or any S3-compatible server.
Every write is atomic: temp file + rename locally, a single PUT on S3.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cbir.errors import InvalidArgument, NotFound

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading slash; "" for the bucket root

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise InvalidArgument(f"not an s3:// URI: {uri!r}")
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise InvalidArgument(f"s3 URI has no bucket: {uri!r}")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def join(base: str, *parts: str) -> str:
    """Join URI/path segments with '/', for both local paths and s3 URIs."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class RequestStats:
    """Process-wide count of S3 API calls and HTTP attempts made through ``s3_client``
    clients: ``attempts - calls`` is how many requests botocore retried. Thread-safe; a Spark
    worker runs one task at a time, so a task reads its own retries as a delta."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.attempts = 0

    def _on_call(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1

    def _on_send(self, **_: Any) -> None:
        with self._lock:
            self.attempts += 1

    def retries(self) -> int:
        with self._lock:
            return max(0, self.attempts - self.calls)


S3_REQUESTS = RequestStats()


def s3_client(max_attempts: int = 8) -> Any:
    """The process's boto3 S3 client for the current env (built once per endpoint, retry
    settings and credentials, then shared: clients are thread-safe, building one costs tens of
    milliseconds, and building them from boto3's default session is not thread-safe).

    botocore's retry layer handles every *request-level* transient fault: throttling (503
    SlowDown, 429, ...), 500/502/503/504, connection resets/timeouts before a response. Mode
    ``standard`` (exponential backoff with full jitter, capped at 20 s; a retry quota stops
    retry storms) unless ``AWS_RETRY_MODE`` says otherwise (``adaptive`` adds client-side rate
    limiting); ``AWS_MAX_ATTEMPTS`` overrides ``max_attempts`` (total tries, first included).
    """
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or max_attempts)
    mode = os.environ.get("AWS_RETRY_MODE") or "standard"
    credentials = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    with _CLIENT_LOCK:
        return _new_s3_client(endpoint_url(), attempts, mode, credentials)


_CLIENT_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _new_s3_client(
    endpoint: str | None, attempts: int, mode: str, _credentials: tuple[str | None, str | None]
) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"max_attempts": attempts, "mode": mode},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,
    )
    client = boto3.client("s3", endpoint_url=endpoint, config=cfg)
    client.meta.events.register("before-call.s3", S3_REQUESTS._on_call)
    client.meta.events.register("before-send.s3", S3_REQUESTS._on_send)
    return client


@lru_cache(maxsize=4)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    kwargs["region"] = region or "us-east-1"
    # Same budget as boto3's clients (pyarrow's default is 3 tries).
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=8)
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for reading/writing Parquet."""
    if is_s3(uri):
        loc = parse_s3(uri)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = _s3_filesystem(endpoint_url(), region)
        return fs, f"{loc.bucket}/{loc.key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        loc = parse_s3(uri)
        client = s3_client()
        try:
            return bytes(client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
        except client.exceptions.NoSuchKey as exc:
            raise NotFound(f"no such object: {uri}") from exc
        except client.exceptions.NoSuchBucket as exc:
            raise NotFound(f"no such bucket: {loc.bucket}") from exc
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"no such file: {uri}") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: readers see the old object or the whole new one, never a prefix."""
    if is_s3(uri):
        loc = parse_s3(uri)
        s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def exists(uri: str) -> bool:
    if is_s3(uri):
        loc = parse_s3(uri)
        client = s3_client()
        try:
            client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return Path(uri).exists()


def list_names(uri: str) -> Iterator[str]:
    """Relative names of the objects under a prefix/directory (recursive, paginated)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(prefix) :]
        return
    root = Path(uri)
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix()


def delete(uri: str) -> None:
    if is_s3(uri):
        loc = parse_s3(uri)
        s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
        return
    Path(uri).unlink(missing_ok=True)



def create_if_absent(uri: str, data: bytes) -> bool:
    """Create ``uri`` with ``data`` only if nothing exists there yet, atomically: True if this
    call created it, False if an object was already there (or another writer is creating it).
    S3: a conditional PUT (``If-None-Match: *``); locally: a fully written temp file hard-linked
    into place (``link`` fails if the name exists). This is what orders concurrent writers."""
    if is_s3(uri):
        return _s3_create_if_absent(parse_s3(uri), data)
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _s3_create_if_absent(loc: S3Location, data: bytes) -> bool:
    client = s3_client()
    try:
        client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, IfNoneMatch="*")
        return True
    except client.exceptions.ClientError as exc:
        # 412: the object exists; 409: a concurrent conditional write to the same key is in flight.
        if exc.response.get("Error", {}).get("Code") in (
            "PreconditionFailed", "ConditionalRequestConflict"
        ):
            return False
        raise


def list_names_after(uri: str, after: str = "") -> Iterator[str]:
    """Relative names under a prefix/directory that sort after ``after``, in ascending order
    (S3 lists keys in UTF-8 binary order; ``StartAfter`` skips the rest without listing it)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=loc.bucket, Prefix=prefix, StartAfter=prefix + after)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(prefix) :]
        return
    root = Path(uri)
    if not root.is_dir():
        return
    names = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    yield from (name for name in names if name > after)
