"""Fetching objects with boto3: one client per process, transient errors retried, permanent
per-object refusals recorded, and S3 errors translated to cbir's typed errors.

Who retries what: botocore (``storage.s3_client``, mode standard, 8 tries, exponential backoff
with full jitter) retries requests that fail before a response is returned: throttling,
5xx, connection resets and timeouts. tenacity (here) re-issues a GET whose 2xx body stream
broke mid-read, which botocore cannot see. NoSuchKey / AccessDenied / archived objects are
never retried: the caller records them with a reason."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from urllib3.exceptions import ProtocolError

from cbir import storage
from cbir.errors import CbirError, NotFound, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

# Errors reading a body after a 2xx: botocore cannot retry these (it already returned the
# response), so tenacity re-issues the GET. Everything before the response (throttling, 5xx,
# resets, timeouts) is botocore's retry layer's job (``storage.s3_client``): the two layers
# never retry the same failure, so the worst case is STREAM_ATTEMPTS x botocore's attempts
# only when bodies keep breaking *and* requests keep failing.
STREAM_ERRORS = (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
                 ResponseStreamingError, ProtocolError, OSError)
STREAM_ATTEMPTS = 5
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403"}
_MISSING_BUCKET = {"NoSuchBucket"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_UNREADABLE_CODES = {"InvalidObjectState", "InvalidRange", "MethodNotAllowed"}


class MissingObject(Exception):
    """The object vanished between the listing and the fetch."""


class ObjectUnreadable(Exception):
    """A permanent, per-object S3 refusal (AccessDenied, archived object, ...): retrying will
    not help, so the object is recorded as an error instead of failing the task."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ObjectMeta:
    """What the GET response says about the object (kept as filterable metadata)."""

    last_modified: dt.datetime | None = None
    content_type: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)  # x-amz-meta-NAME -> NAME


def object_meta(resp: dict[str, Any]) -> ObjectMeta:
    # boto3 already strips the x-amz-meta- prefix; S3 lower-cases the names.
    user = {str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()}
    return ObjectMeta(resp.get("LastModified"), resp.get("ContentType"), user)


class _StreamCut(Exception):
    """The body stream broke after a 2xx response: only a fresh GET can recover it."""


def translate(exc: Exception, what: str) -> CbirError:
    """A boto3/botocore error -> the typed cbir error a user can act on."""
    if isinstance(exc, NoCredentialsError):
        return Unauthenticated(f"{what}: no AWS credentials found (env, profile or role)")
    if isinstance(exc, EndpointConnectionError):
        return Unavailable(f"{what}: cannot reach the S3 endpoint ({exc})")
    if isinstance(exc, ClientError):
        code = _client_error_code(exc)
        if code in _MISSING_BUCKET:
            return NotFound(f"{what}: bucket does not exist")
        if code in _AUTH_CODES:
            return Unauthenticated(f"{what}: bad AWS credentials ({code})")
        if code in _DENIED_CODES:
            return PermissionDenied(f"{what}: access denied")
        return Unavailable(f"{what}: S3 error {code}")
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


def _log_retry(state: RetryCallState) -> None:
    log.warning("re-fetching after a cut body stream (attempt %d): %s", state.attempt_number,
                state.outcome.exception() if state.outcome else "")


def _client_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _botocore_retries(meta: dict[str, Any]) -> int:
    return int(meta.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


def _get_once(bucket: str, key: str, retries: list[int], meta: list[ObjectMeta]) -> bytes:
    """One GetObject (botocore retries the request itself) + reading its body; botocore's
    retries are added to ``retries[0]`` even when the body then breaks; the response's object
    metadata goes to ``meta[0]``."""
    resp = storage.s3_client().get_object(Bucket=bucket, Key=key)
    retries[0] += _botocore_retries(resp)
    meta[0] = object_meta(resp)
    body = resp["Body"]
    try:
        return bytes(body.read())
    except STREAM_ERRORS as exc:
        raise _StreamCut(f"{type(exc).__name__}: {exc}") from exc
    finally:
        body.close()


def _classify(exc: ClientError, bucket: str, key: str) -> Exception:
    code = _client_error_code(exc)
    if code in _MISSING_KEY:
        return MissingObject(key)
    if code in _DENIED_CODES:
        return ObjectUnreadable("access_denied", f"S3 {code}")
    if code in _UNREADABLE_CODES:
        return ObjectUnreadable("unreadable", f"S3 {code}")
    return translate(exc, f"s3://{bucket}/{key}")


def fetch(bucket: str, key: str) -> tuple[bytes, int]:
    """(object bytes, retries): ``fetch_with_meta`` without the metadata."""
    data, retries, _ = fetch_with_meta(bucket, key)
    return data, retries


def fetch_tags(bucket: str, key: str) -> dict[str, str]:
    """The object's tags as ``tag_NAME`` attributes (one more request: --with-tags)."""
    try:
        resp = storage.s3_client().get_object_tagging(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise _classify(exc, bucket, key) from exc
    except BotoCoreError as exc:
        raise translate(exc, f"s3://{bucket}/{key}") from exc
    return {f"tag_{t['Key'].lower()}": str(t["Value"]) for t in resp.get("TagSet", [])}


def fetch_with_meta(bucket: str, key: str) -> tuple[bytes, int, ObjectMeta]:
    """(object bytes, retries used: botocore's request retries + tenacity's re-GETs after a
    cut body). Raises MissingObject / ObjectUnreadable for permanent per-object refusals, or a
    typed cbir error (Unavailable once retries are exhausted: the task fails, Spark retries it).
    """
    retries = [0]
    meta = [ObjectMeta()]
    try:
        for attempt in Retrying(retry=retry_if_exception_type(_StreamCut),
                                stop=stop_after_attempt(STREAM_ATTEMPTS),
                                wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
                                before_sleep=_log_retry, reraise=True):
            with attempt:
                data = _get_once(bucket, key, retries, meta)
        return data, retries[0] + attempt.retry_state.attempt_number - 1, meta[0]
    except ClientError as exc:
        raise _classify(exc, bucket, key) from exc
    except _StreamCut as exc:
        raise Unavailable(f"s3://{bucket}/{key}: body stream cut {STREAM_ATTEMPTS} times: "
                          f"{exc}") from exc
    except BotoCoreError as exc:
        raise translate(exc, f"s3://{bucket}/{key}") from exc
