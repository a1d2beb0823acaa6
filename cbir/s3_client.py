"""The process's S3 clients (boto3 for requests, pyarrow for Parquet), built once per endpoint
and settings: the plumbing under ``cbir.storage``, which every caller uses instead.

S3 endpoint and credentials come from the standard AWS chain; ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) points boto3 and pyarrow at MinIO, moto or any S3-compatible server,
``AWS_S3_ADDRESSING_STYLE`` picks path- or virtual-hosted-style requests.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cbir.errors import InvalidArgument

ADDRESSING_STYLES = ("auto", "path", "virtual")


def endpoint_url() -> str | None:
    """The S3 endpoint override, refused early when it cannot be a URL (boto3 would fail
    later with a confusing message, pyarrow would silently use https)."""
    name = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    url = os.environ.get(name) or None
    if url is not None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidArgument(f"{name}={url!r} is not a URL: give the scheme, e.g. "
                                  f"http://{url.split('://')[-1]} or https://...")
    return url


def addressing_style() -> str:
    """``AWS_S3_ADDRESSING_STYLE`` (path | virtual | auto): many S3-compatible servers need
    path-style requests. Read by boto3 and pyarrow clients alike, and shipped to executors."""
    style = os.environ.get("AWS_S3_ADDRESSING_STYLE") or "auto"
    if style not in ADDRESSING_STYLES:
        raise InvalidArgument(f"AWS_S3_ADDRESSING_STYLE={style!r}: use path, virtual or auto")
    return style


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
        return _new_s3_client(endpoint_url(), attempts, mode, credentials, addressing_style())


_CLIENT_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _new_s3_client(
    endpoint: str | None, attempts: int, mode: str,
    _credentials: tuple[str | None, str | None], style: str = "auto",
) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"max_attempts": attempts, "mode": mode},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,
        s3={"addressing_style": style},
    )
    client = boto3.client("s3", endpoint_url=endpoint, config=cfg)
    client.meta.events.register("before-call.s3", S3_REQUESTS._on_call)
    client.meta.events.register("before-send.s3", S3_REQUESTS._on_send)
    return client


@lru_cache(maxsize=4)
def s3_filesystem(endpoint: str | None, region: str | None,
                   style: str = "auto") -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"force_virtual_addressing": style == "virtual"}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    kwargs["region"] = region or "us-east-1"
    # Same budget as boto3's clients (pyarrow's default is 3 tries).
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=8)
    return pafs.S3FileSystem(**kwargs)
