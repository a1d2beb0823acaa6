"""Object storage: one API over local paths and ``s3://`` URIs, and the one place that turns
S3/botocore failures into typed cbir errors (``translate``): AccessDenied is not NotFound, bad
credentials, an unreachable endpoint and an endpoint that is not S3 each say so.

The verbs callers need: listing with sizes and pagination, read, ranged read, download to a
file, atomic write, conditional create, exists, delete. Every write is atomic: temp file +
rename locally, a single PUT on S3. The clients themselves live in ``cbir.s3_client``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cbir.errors import (
    CbirError,
    FailedPrecondition,
    InvalidArgument,
    NoSuchObject,
    NotFound,
    PermissionDenied,
    StreamCut,
    Unauthenticated,
    Unavailable,
)

# Re-exported (callers use storage.s3_client, storage.S3_REQUESTS, ...).
from cbir.s3_client import ADDRESSING_STYLES as ADDRESSING_STYLES
from cbir.s3_client import S3_REQUESTS as S3_REQUESTS
from cbir.s3_client import RequestStats as RequestStats
from cbir.s3_client import addressing_style as addressing_style
from cbir.s3_client import endpoint_url as endpoint_url
from cbir.s3_client import s3_client as s3_client
from cbir.s3_client import s3_filesystem

S3_SCHEME = "s3://"
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_UNREADABLE_CODES = {"InvalidObjectState", "InvalidRange", "MethodNotAllowed"}


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


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for reading/writing Parquet."""
    if is_s3(uri):
        loc = parse_s3(uri)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = s3_filesystem(endpoint_url(), region, addressing_style())
        return fs, f"{loc.bucket}/{loc.key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _client_error(exc: Exception, what: str) -> CbirError:
    code = _error_code(exc)
    operation = getattr(exc, "operation_name", "")
    if code == "NoSuchBucket":
        return NotFound(f"{what}: bucket does not exist")
    if code in _MISSING_KEY:
        if code.isdigit() and not operation.startswith("Head"):
            # Only HEAD answers carry no body; anything else without an S3 error document
            # came from a server that is not S3 (a web server, a proxy's error page).
            return Unavailable(f"{what}: the endpoint answered HTTP {code} without an S3 "
                               f"error: is {endpoint_url() or 'it'} an S3 endpoint?")
        return NoSuchObject(f"{what}: no such object")
    if code in _AUTH_CODES:
        return Unauthenticated(f"{what}: the AWS credentials were refused ({code}): check the "
                               "access key id and secret (or the session token's expiry)")
    if code in _DENIED_CODES:
        return PermissionDenied(f"{what}: access denied: the credentials are valid but not "
                                "allowed to do this (bucket policy / IAM)")
    if code in _UNREADABLE_CODES:
        return FailedPrecondition(f"{what}: object not readable now (S3 {code})")
    return Unavailable(f"{what}: S3 error {code or '?'}")


def translate(exc: BaseException, what: str) -> CbirError:
    """Any boto3/botocore failure -> the typed cbir error that says what to do. ``what`` names
    the operation and URI; messages never contain credentials."""
    from botocore import exceptions as bce
    from botocore.parsers import ResponseParserError

    endpoint = endpoint_url() or "the S3 endpoint"
    if isinstance(exc, CbirError):
        return exc
    if isinstance(exc, bce.ClientError):
        return _client_error(exc, what)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return Unauthenticated(f"{what}: no AWS credentials found (environment variables, "
                               "profile or instance role)")
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError):
        return Unavailable(f"{what}: cannot reach {endpoint}: is it running and is "
                           "AWS_ENDPOINT_URL right?")
    if isinstance(exc, bce.ConnectionClosedError | RecursionError | ResponseParserError):
        return Unavailable(f"{what}: {endpoint} did not answer like S3: is AWS_ENDPOINT_URL an "
                           "S3 endpoint?")
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Translate every S3 failure inside the block (see ``translate``)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    try:
        yield
    except (BotoCoreError, ClientError, RecursionError, ResponseParserError) as exc:
        raise translate(exc, what) from None


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # the full key inside the bucket
    size: int
    etag: str


def list_objects(uri: str, page_size: int = 1000) -> Iterator[ObjectInfo]:
    """Every object under an ``s3://bucket[/prefix]`` (as a folder), with sizes and ETags;
    paginated, so a bucket of any size streams in pages of ``page_size``."""
    loc = parse_s3(uri)
    prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
    pages = {"PageSize": page_size}
    with s3_errors(f"listing {uri}"):
        for page in s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=prefix, PaginationConfig=pages):
            if "Name" not in page:  # every ListBucketResult names its bucket
                raise Unavailable(f"listing {uri}: {endpoint_url() or 'the endpoint'} did not "
                                  "answer like S3: is AWS_ENDPOINT_URL an S3 endpoint?")
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"], int(obj.get("Size", 0)),
                                 str(obj.get("ETag", "")).strip('"'))


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        loc = parse_s3(uri)
        with s3_errors(f"reading {uri}"):
            return bytes(s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise NoSuchObject(f"no such file: {uri}") from exc


@dataclass(frozen=True)
class Prefix:
    """The first bytes of an object (``read_prefix``)."""

    data: bytes  # at most max_bytes + 1 bytes: one more than allowed tells "too large"
    size: int  # the object's whole size at the time of the GET
    etag: str
    retries: int  # request attempts botocore retried
    # What the GET response says about the object (the backfill keeps it as filterable
    # metadata, docs/filters.md): Last-Modified, Content-Type, x-amz-meta-* (prefix stripped).
    last_modified: Any = None  # datetime.datetime | None
    content_type: str | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)


def _total_size(resp: dict[str, Any]) -> int:
    content_range = str(resp.get("ContentRange") or "")  # "bytes 0-99/1234"
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else int(resp.get("ContentLength") or 0)


def read_prefix(uri: str, max_bytes: int) -> Prefix:
    """A ranged GET of at most ``max_bytes + 1`` bytes: an object that grew past a limit after
    it was listed costs the limit, not its whole size. ``StreamCut`` when the body broke after
    a 2xx answer (botocore cannot retry that; the caller may GET again)."""
    from botocore.exceptions import BotoCoreError, ClientError

    loc = parse_s3(uri)
    with s3_errors(uri):
        resp = s3_client().get_object(Bucket=loc.bucket, Key=loc.key,
                                      Range=f"bytes=0-{max_bytes}")
    retries = int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)
    body = resp["Body"]
    try:
        data = bytes(body.read(max_bytes + 1))  # a server that ignores Range: still bounded
    except (BotoCoreError, ClientError, OSError) as exc:
        raise StreamCut(f"{uri}: body stream cut: {type(exc).__name__}: {exc}", retries) from exc
    finally:
        body.close()
    return Prefix(data, _total_size(resp), str(resp.get("ETag", "")).strip('"'), retries,
                  resp.get("LastModified"), resp.get("ContentType"),
                  {str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()})


def download(uri: str, dest: str) -> None:
    """Stream an object to a local file (multipart, no whole object in memory)."""
    loc = parse_s3(uri)
    with s3_errors(f"downloading {uri}"):
        s3_client().download_file(loc.bucket, loc.key, dest)


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: readers see the old object or the whole new one, never a prefix."""
    if is_s3(uri):
        loc = parse_s3(uri)
        with s3_errors(f"writing {uri}"):
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return
    path = Path(uri)
    tmp = _durable_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(uri: str, source: str) -> None:
    """Atomic write of a local file's contents, streamed (never the whole object in memory):
    a multipart upload on S3 (the object appears only when it completes), temp + rename
    locally. For large outputs, e.g. a shard's index."""
    if is_s3(uri):
        loc = parse_s3(uri)
        with s3_errors(f"writing {uri}"):
            s3_client().upload_file(source, loc.bucket, loc.key)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _durable_temp(path: Path, data: bytes) -> str:
    """``data`` in a synced temp file beside ``path`` (same filesystem, so a rename or link
    into place is atomic); the caller moves it or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def check_writable(uri: str, what: str = "output") -> None:
    """Write and delete a probe object under ``uri``: a missing bucket, a read-only directory
    or refused credentials fail here, before any expensive work."""
    probe = join(uri, f"_cbir_write_probe_{os.getpid()}_{threading.get_ident()}")
    if is_s3(uri):
        loc = parse_s3(probe)
        with s3_errors(f"{what} {uri}"):
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=b"")
            s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
        return
    try:
        write_bytes(probe, b"")
        delete(probe)
    except OSError as exc:
        raise PermissionDenied(f"{what} {uri} is not writable: {exc.strerror or exc}") from None


def exists(uri: str) -> bool:
    if is_s3(uri):
        loc = parse_s3(uri)
        try:
            with s3_errors(f"checking {uri}"):
                s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except NoSuchObject:
            return False
    return Path(uri).exists()


def list_names(uri: str) -> Iterator[str]:
    """Relative names of the objects under a prefix/directory (recursive, paginated)."""
    if is_s3(uri):
        prefix = parse_s3(uri).key.rstrip("/")
        for obj in list_objects(uri):
            yield obj.key[len(prefix) + 1 if prefix else 0 :]
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
        with s3_errors(f"deleting {uri}"):
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
    tmp = _durable_temp(path, data)
    try:
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
        raise translate(exc, f"writing {loc.uri}") from None
    except Exception as exc:  # botocore's other failures: one typed error like every verb
        raise translate(exc, f"writing {loc.uri}") from None


def list_names_after(uri: str, after: str = "") -> Iterator[str]:
    """Relative names under a prefix/directory that sort after ``after``, in ascending order
    (S3 lists keys in UTF-8 binary order; ``StartAfter`` skips the rest without listing it)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=loc.bucket, Prefix=prefix, StartAfter=prefix + after)
        with s3_errors(f"listing {uri}"):
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(prefix) :]
        return
    root = Path(uri)
    if not root.is_dir():
        return
    names = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    yield from (name for name in names if name > after)
