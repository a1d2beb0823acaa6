"""The "current index version" pointer: a small object (S3 or local file) whose content is the
URI of the index version root to serve, e.g. ``s3://b/indexes/CURRENT`` -> ``s3://b/indexes/v2``.

Flipping it is one atomic write (a single PUT on S3, temp + rename locally), so a watcher reads
either the old or the new URI, never a torn one. Shard servers started with ``--index-pointer``
poll it (``shard_server.pointer``); ``cbir index-pointer`` and ``cbir compact`` flip it. It lives
in the core because both the servers and the jobs read and write it.
"""

from __future__ import annotations

from cbir import index_layout, storage
from cbir.errors import InvalidArgument, NotFound
from cbir.rpc.logs import has_control_chars
from cbir.schema import INDEX_MANIFEST

MAX_POINTER_BYTES = 4096


def read_pointer(pointer_uri: str) -> str:
    """The index URI the pointer names (stripped); NotFound / InvalidArgument when unusable.
    The content is storage data: errors describe it, never quote it (it reaches the logs)."""
    data = storage.read_bytes(pointer_uri)
    if len(data) > MAX_POINTER_BYTES:
        raise InvalidArgument(f"index pointer {pointer_uri} is {len(data)} bytes; not a pointer")
    try:
        target = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"index pointer {pointer_uri} is not UTF-8 text") from exc
    if not target or "\n" in target:
        raise InvalidArgument(f"index pointer {pointer_uri} must hold exactly one URI")
    if has_control_chars(target):
        raise InvalidArgument(f"index pointer {pointer_uri} holds control characters")
    return target


def write_pointer(pointer_uri: str, target: str, check: bool = True) -> None:
    """Point ``pointer_uri`` at ``target`` atomically. With ``check``, the target must be a
    committed index (its top-level manifest, written last by the build, exists)."""
    target = target.strip()
    if not target or "\n" in target or has_control_chars(target):
        raise InvalidArgument("the index URI must be one non-empty line of printable text")
    if check and not storage.exists(index_layout.index_manifest_uri(target)):
        raise NotFound(f"{target} is not a committed index (no {INDEX_MANIFEST})")
    storage.write_bytes(pointer_uri, (target + "\n").encode("utf-8"))
