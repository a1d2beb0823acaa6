"""Which index URIs this replica may load (no grpc): the allowed roots, and the pointer rule.

``LoadIndex`` makes the server read whatever object it is told to. Without a bound, anyone
allowed to call it could make the shard read any object its credentials reach (a config file,
a secret) and probe it through the error messages. So a URI is accepted only when it is plain
(no ``?``/``#``, no ``.``/``..`` segments, no control characters, bounded length) and lies under
one of the allowed roots (``--allowed-index-root``; by default the parent of the served index
or of the pointer). The same check applies to a pointer's target.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cbir.rpc.logs import has_control_chars, safe_text

MAX_URI_CHARS = 1024


def check_index_uri(uri: str) -> str:
    """``uri`` normalised (no trailing '/', local paths absolute); InvalidArgument when it is
    not a plain index location. Messages quote the URI only through ``safe_text``."""
    shown = safe_text(uri, 200)
    if not uri or len(uri) > MAX_URI_CHARS:
        raise InvalidArgument(f"index URI must be 1..{MAX_URI_CHARS} characters")
    if has_control_chars(uri) or "?" in uri or "#" in uri or "\\" in uri:
        raise InvalidArgument(f"index URI {shown} has '?', '#', '\\' or control characters")
    if "://" in uri and not storage.is_s3(uri):
        raise InvalidArgument(f"index URI {shown}: only s3:// URIs and local paths are served")
    body = uri[len(storage.S3_SCHEME):] if storage.is_s3(uri) else uri
    parts = body.rstrip("/").split("/")
    if any(p in (".", "..") for p in parts) or "" in parts[1:]:
        raise InvalidArgument(f"index URI {shown} has an empty, '.' or '..' path segment")
    if storage.is_s3(uri):
        if not parts[0]:
            raise InvalidArgument(f"index URI {shown} has no bucket")
        return storage.S3_SCHEME + "/".join(parts)
    return os.path.abspath(body)


def parent_of(uri: str) -> str:
    """The folder holding ``uri`` (``s3://b/indexes/v1`` -> ``s3://b/indexes``); a bucket's
    root stays itself."""
    uri = check_index_uri(uri)
    if storage.is_s3(uri):
        loc = storage.parse_s3(uri)
        return storage.S3Location(loc.bucket, posixpath.dirname(loc.key)).uri
    return os.path.dirname(uri)


def _under(uri: str, root: str) -> bool:
    if storage.is_s3(uri) != storage.is_s3(root):
        return False
    if not storage.is_s3(uri):  # resolve symlinks: a link inside the root must not lead out
        uri, root = os.path.realpath(uri), os.path.realpath(root)
    return uri == root or uri.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class IndexPolicy:
    """Where indexes may come from, and whether manual loads are allowed at all."""

    allowed_roots: tuple[str, ...]
    # Set on replicas that follow a pointer: the pointer decides what they serve.
    index_pointer: str | None = None

    @classmethod
    def build(cls, roots: Iterable[str], index_uri: str = "",
              index_pointer: str | None = None) -> IndexPolicy:
        """Explicit roots, else the parent of the pointer or of the served index."""
        chosen = [check_index_uri(r) for r in roots]
        if not chosen:
            source = index_pointer or index_uri
            if not source:
                raise InvalidArgument("no index, pointer or --allowed-index-root to bound loads")
            chosen = [parent_of(source)]
        return cls(tuple(chosen), index_pointer)

    def check(self, uri: str) -> str:
        """The normalised ``uri`` if it may be loaded; else InvalidArgument/PermissionDenied."""
        clean = check_index_uri(uri)
        if not any(_under(clean, root) for root in self.allowed_roots):
            raise PermissionDenied(
                f"index URI {safe_text(uri, 200)} is outside the allowed index root(s) "
                f"{', '.join(self.allowed_roots)} (--allowed-index-root)")
        return clean

    def check_manual_load(self, uri: str) -> str:
        """A LoadIndex call: refused on pointer followers (the pointer is authoritative)."""
        if self.index_pointer is not None:
            raise FailedPrecondition(
                f"this replica follows the index pointer {self.index_pointer}: flip the pointer "
                "(cbir index-pointer set) instead of calling LoadIndex")
        return self.check(uri)
