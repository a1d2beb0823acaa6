"""Typed exceptions raised by the core.

Servers map them to gRPC status codes in one table (``cbir.rpc.status``); the CLI maps them to
a one-line message and a non-zero exit code. Messages must never contain credentials.
"""

from __future__ import annotations


class CbirError(Exception):
    """Base of every error cbir raises on purpose."""


class InvalidArgument(CbirError):
    """The caller sent something malformed: wrong dim, NaN, bad k, bad URI..."""


class NotFound(CbirError):
    """A named thing (image id, bucket, index, shard) does not exist."""


class ResourceExhausted(CbirError):
    """A size limit was hit (payload, pixels, batch)."""


class FailedPrecondition(CbirError):
    """The system is not in a state to do this (index not loaded, model/dim mismatch)."""


class Unavailable(CbirError):
    """A dependency is down; retrying later or elsewhere may work."""


class DeadlineExceeded(Unavailable):
    """The caller's deadline passed (or was too short) before an answer could be made."""


class PermissionDenied(CbirError):
    """Credentials were given but are not allowed to do this."""


class Unauthenticated(CbirError):
    """No or invalid credentials."""


class BadImage(InvalidArgument):
    """Bytes that cannot become an embedding. ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelMismatch(FailedPrecondition):
    """An index built with one model/dim is offered to a server expecting another."""


class IdCollision(CbirError):
    """Two distinct keys hashed to the same 63-bit image id."""


class NoSuchObject(NotFound):
    """A named object or file does not exist (the bucket may well exist)."""


class StreamCut(Unavailable):
    """An object's body broke off after the server answered 2xx: only a new request helps.
    ``retries``: request attempts botocore had already retried before that answer."""

    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries
