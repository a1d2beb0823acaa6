"""Fetching one image object for the backfill.

A ranged GET capped at the image size limit (``storage.read_prefix``): an object that grew after
it was listed costs the limit, not its new size, and is recorded as too large. Per-object
permanent refusals (deleted after listing, access denied, archived) become a ``BadImage``
reason, recorded like any other bad object; they are never retried.

Who retries what: botocore (``storage.s3_client``, mode standard, 8 tries, exponential backoff
with full jitter) retries requests that fail before a response is returned: throttling, 5xx,
connection resets and timeouts. tenacity (here) re-issues a GET whose 2xx body stream broke
mid-read, which botocore cannot see, so the two layers never retry the same failure.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cbir import storage
from cbir.errors import (
    BadImage,
    FailedPrecondition,
    NoSuchObject,
    PermissionDenied,
    StreamCut,
    Unavailable,
)

log = logging.getLogger(__name__)

STREAM_ATTEMPTS = 5


def _log_retry(state: RetryCallState) -> None:
    log.warning("re-fetching after a cut body stream (attempt %d): %s", state.attempt_number,
                state.outcome.exception() if state.outcome else "")


def _read_counting(uri: str, max_bytes: int, cut_retries: list[int]) -> storage.Prefix:
    try:
        return storage.read_prefix(uri, max_bytes)
    except StreamCut as exc:  # botocore's retries before the cut answer still count
        cut_retries[0] += exc.retries
        raise


def _read(uri: str, max_bytes: int) -> tuple[storage.Prefix, int]:
    """(the object's first bytes, retries: botocore's for answers whose body was then cut,
    plus the GETs re-issued after a cut body)."""
    cut_retries = [0]
    try:
        for attempt in Retrying(retry=retry_if_exception_type(StreamCut),
                                stop=stop_after_attempt(STREAM_ATTEMPTS),
                                wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
                                before_sleep=_log_retry, reraise=True):
            with attempt:
                got = _read_counting(uri, max_bytes, cut_retries)
        return got, cut_retries[0] + attempt.retry_state.attempt_number - 1
    except NoSuchObject:
        raise BadImage("missing", "deleted after listing") from None
    except PermissionDenied:
        raise BadImage("access_denied", "S3 AccessDenied") from None
    except FailedPrecondition as exc:  # archived (InvalidObjectState) and the like
        raise BadImage("unreadable", str(exc)) from None
    except StreamCut as exc:
        raise Unavailable(f"{uri}: body stream cut {STREAM_ATTEMPTS} times: {exc}") from exc


@dataclass(frozen=True)
class ObjectMeta:
    """What the GET response says about the object (kept as filterable metadata)."""

    last_modified: dt.datetime | None = None
    content_type: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)  # x-amz-meta-NAME -> NAME


def fetch(bucket: str, key: str, max_bytes: int, listed_size: int | None = None
          ) -> tuple[bytes, int]:
    """(the object's bytes, retries used): ``fetch_with_meta`` without the metadata."""
    data, retries, _ = fetch_with_meta(bucket, key, max_bytes, listed_size)
    return data, retries


def fetch_tags(bucket: str, key: str) -> dict[str, str]:
    """The object's tags as ``tag_NAME`` attributes (one more request: --with-tags)."""
    uri = f"s3://{bucket}/{key}"
    try:
        with storage.s3_errors(f"tags of {uri}"):
            resp = storage.s3_client().get_object_tagging(Bucket=bucket, Key=key)
    except NoSuchObject:
        raise BadImage("missing", "deleted after listing") from None
    except PermissionDenied:
        raise BadImage("access_denied", "S3 AccessDenied (GetObjectTagging)") from None
    return {f"tag_{t['Key'].lower()}": str(t["Value"]) for t in resp.get("TagSet", [])}


def fetch_with_meta(bucket: str, key: str, max_bytes: int, listed_size: int | None = None
                    ) -> tuple[bytes, int, ObjectMeta]:
    """(the object's bytes, retries used: botocore's + tenacity's re-GETs, its metadata).
    Raises ``BadImage`` for a per-object refusal or an object now larger than ``max_bytes``;
    a typed cbir error (``Unavailable`` once retries are exhausted: the task fails and Spark
    retries it)."""
    uri = f"s3://{bucket}/{key}"
    got, regets = _read(uri, max_bytes)
    if got.size > max_bytes or len(got.data) > max_bytes:
        grew = f" (listed as {listed_size} bytes)" if listed_size not in (None, got.size) else ""
        raise BadImage("too_large", f"{got.size} bytes > limit {max_bytes}{grew}")
    if listed_size is not None and got.size != listed_size:
        log.info("%s changed after listing: %s -> %d bytes", uri, listed_size, got.size)
    meta = ObjectMeta(got.last_modified, got.content_type, dict(got.user_metadata))
    return got.data, got.retries + regets, meta
