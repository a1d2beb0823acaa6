"""One local copy of an index version's files, shared by a shard server's workers.

With ``--index-cache-dir`` (set by ``--workers N > 1``) the files of a version are fetched once
into ``DIR/<checksum>/`` and every worker memory-maps them there, so the page cache holds one copy
of the index for all of them (docs/scaling.md, memory per pod). The first worker to get the
lock downloads and verifies (sha256 against the manifest); the directory's existence under its
final name is the proof, so the others neither download nor hash again. A version whose files
are not needed any more is removed when a newer one arrives (``keep`` newest stay): a worker
that still maps an unlinked file keeps reading it, Linux frees it at the last unmap.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cbir import storage
from cbir.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
KEEP_VERSIONS = 3  # the serving one, the kept previous one, the one being loaded


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_checksum(path: str, expected: str, where: str) -> None:
    if (actual := sha256_file(path)) != expected:
        raise FailedPrecondition(
            f"{where}: index.faiss checksum {actual[:12]}... != manifest {expected[:12]}"
            "... (corrupt or partially written index)"
        )


def fetch(uri: str, directory: str) -> str:
    """A local file holding ``uri``: the path itself, or a streamed download from S3."""
    if not storage.is_s3(uri):
        if not Path(uri).is_file():
            raise NotFound(f"no such file: {uri}")
        return uri
    dest = str(Path(directory) / Path(storage.parse_s3(uri).key).name)
    storage.download(uri, dest)  # S3 errors arrive typed (NotFound, PermissionDenied, ...)
    return dest


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One fetcher at a time per cache (flock: released if the holder dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_version(cache_dir: str, checksum: str, uris: dict[str, str],
                   verify: Callable[[str], None]) -> Path:
    """``DIR/<checksum>/`` holding a local copy of each of ``uris`` (name -> URI); ``verify``
    gets the local index file before the directory is published under its final name."""
    root = Path(cache_dir)
    final = root / checksum
    with _locked(root):
        if final.is_dir():
            os.utime(final)  # newest: not the one a later cleanup removes
            return final
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        try:
            for name, uri in uris.items():
                local, target = fetch(uri, str(staging)), staging / name
                if storage.is_s3(uri):
                    os.replace(local, target)
                else:  # a copy: a file rewritten in place under a mapping would crash us
                    shutil.copyfile(local, target)
            verify(str(staging / "index.faiss"))
            os.rename(staging, final)  # the commit: complete and verified
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _drop_old(root, KEEP_VERSIONS)
    log.info("index files of %s cached in %s", checksum[:12], final)
    return final


def _drop_old(root: Path, keep: int) -> None:
    versions = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for old in versions[keep:]:
        log.info("removing cached index files %s", old)
        shutil.rmtree(old, ignore_errors=True)
