"""Fetching objects with boto3: one client per process, transient errors retried (the client's
adaptive retry mode handles throttling/5xx; tenacity also covers a body stream cut mid-read),
and S3 errors translated to cbir's typed errors with one clear line."""

from __future__ import annotations

import logging
from functools import lru_cache
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
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cbir import storage
from cbir.errors import CbirError, NotFound, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

TRANSIENT = (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
             ResponseStreamingError, EndpointConnectionError)
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403"}
_MISSING_BUCKET = {"NoSuchBucket"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


class MissingObject(Exception):
    """The object vanished between the listing and the fetch."""


@lru_cache(maxsize=1)
def client() -> Any:
    """One boto3 client per process (thread-safe; executors reuse it across tasks)."""
    return storage.s3_client()


def translate(exc: Exception, what: str) -> CbirError:
    """A boto3/botocore error -> the typed cbir error a user can act on."""
    if isinstance(exc, NoCredentialsError):
        return Unauthenticated(f"{what}: no AWS credentials found (env, profile or role)")
    if isinstance(exc, EndpointConnectionError):
        return Unavailable(f"{what}: cannot reach the S3 endpoint ({exc})")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_BUCKET:
            return NotFound(f"{what}: bucket does not exist")
        if code in _AUTH_CODES:
            return Unauthenticated(f"{what}: bad AWS credentials ({code})")
        if code in _DENIED_CODES:
            return PermissionDenied(f"{what}: access denied")
        return Unavailable(f"{what}: S3 error {code}")
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


def _count_retry(state: RetryCallState) -> None:
    log.warning("retrying fetch (attempt %d): %s", state.attempt_number,
                state.outcome.exception() if state.outcome else "")


@retry(retry=retry_if_exception_type(TRANSIENT), stop=stop_after_attempt(5),
       wait=wait_exponential_jitter(multiplier=0.2, max=5.0), before_sleep=_count_retry,
       reraise=True)
def _get(bucket: str, key: str) -> bytes:
    body = client().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


def fetch(bucket: str, key: str) -> tuple[bytes, int]:
    """(object bytes, retries used). Raises MissingObject or a typed cbir error."""
    try:
        data = _get(bucket, key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_KEY:
            raise MissingObject(key) from exc
        raise translate(exc, f"s3://{bucket}/{key}") from exc
    except (BotoCoreError, *TRANSIENT) as exc:
        raise translate(exc, f"s3://{bucket}/{key}") from exc
    stats = getattr(_get, "statistics", {}) or {}
    return data, max(0, int(stats.get("attempt_number", 1)) - 1)
