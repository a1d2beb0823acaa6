"""Loading one shard's index from a local path or s3:// and holding the serving version.

A load is all-or-nothing: the manifest is validated (shard number, dim, model version against
what this server was told to expect), the index file is downloaded to a temporary directory and
its sha256 checked against the manifest before Faiss reads it, and the id -> key table must
match the index's size. ``IndexStore.swap`` replaces the serving version by one reference
assignment; searches that already hold the old ``LoadedIndex`` finish on it, and it is freed
when the last of them drops it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cbir import index_layout, storage
from cbir.errors import FailedPrecondition, ModelMismatch, NotFound, Unavailable
from cbir.options import option
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest
from shard_server.delta import DEFAULT_SCHEMA
from shard_server.index_cache import cached_version, check_checksum, fetch
from shard_server.live import LiveBox
from shard_server.segments import LiveView

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Expectations:
    """What the coordinator serves; an index built otherwise is refused."""

    dim: int | None = option(None, flag="--expect-dim", positive=True,
                             help="refuse an index of another dim")
    model_version: str | None = option(None, flag="--expect-model-version",
                                       help="refuse an index built with another model version")


@dataclass(frozen=True, eq=False)
class LoadedIndex:
    index: Any  # faiss.Index; read-only once loaded (searches share it)
    manifest: ShardManifest
    uri: str
    ids: np.ndarray  # int64, sorted: the ids held, for key lookup and GetVectors membership
    keys: pa.Array  # string, aligned with ids
    memory_bytes: int
    # Filterable metadata, row i = ids[i] (``key`` + ``image_id`` at least; docs/filters.md).
    metadata: pa.Table | None = None
    # The key column's Arrow buffers, read directly by ``keys_of``: a per-request
    # ``pa.compute.take`` costs tens of microseconds and releases the GIL, which on a busy event
    # loop means waiting to get it back.
    _key_offsets: np.ndarray = field(init=False, repr=False)
    _key_data: memoryview = field(init=False, repr=False)
    # The live index: this version's base ids + delta + tombstones, from its folded log position.
    live: LiveBox = field(init=False, repr=False)

    def __post_init__(self) -> None:
        keys = self.keys.fill_null("") if self.keys.null_count else self.keys
        buffers = keys.buffers()
        width = np.int64 if pa.types.is_large_string(keys.type) else np.int32
        offsets = (np.frombuffer(buffers[1], dtype=width)[keys.offset : keys.offset + len(keys) + 1]
                   if buffers[1] is not None else np.zeros(1, dtype=width))
        data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
        object.__setattr__(self, "_key_offsets", offsets.astype(np.int64))
        object.__setattr__(self, "_key_data", data)
        # (getattr: unit tests build key-table-only instances without a manifest)
        dim, wal_seq = getattr(self.manifest, "dim", 1), getattr(self.manifest, "wal_seq", 0)
        schema = self.metadata.schema if self.metadata is not None else DEFAULT_SCHEMA
        object.__setattr__(self, "live",
                           LiveBox(LiveView.of_base(self.ids, dim, wal_seq, schema)))

    @property
    def version(self) -> str:
        return self.manifest.index_version

    def positions(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in the id table, found mask) for each id; -1 and unknown ids are not found."""
        pos = np.searchsorted(self.ids, image_ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (image_ids >= 0) & (len(self.ids) > 0)
        if len(self.ids):
            found &= self.ids[pos] == image_ids
        return pos, found

    def keys_of(self, image_ids: np.ndarray) -> list[str]:
        """Keys for a flat id array; "" where the id is -1 (no result) or unknown."""
        flat = image_ids.reshape(-1)
        pos, found = self.positions(flat)
        if not len(self.ids):
            return [""] * len(flat)
        offsets, data = self._key_offsets, self._key_data
        starts, ends = offsets[pos].tolist(), offsets[pos + 1].tolist()
        return [str(data[s:e], "utf-8") if ok else ""
                for s, e, ok in zip(starts, ends, found.tolist(), strict=True)]


def check_expectations(manifest: ShardManifest, expect: Expectations, where: str) -> None:
    if expect.dim is not None and manifest.dim != expect.dim:
        raise ModelMismatch(f"{where}: index dim {manifest.dim} != expected dim {expect.dim}")
    if expect.model_version is not None and manifest.model_version != expect.model_version:
        raise ModelMismatch(
            f"{where}: index built with model version {manifest.model_version!r}, "
            f"this server expects {expect.model_version!r}"
        )
    if manifest.metric != "ip":
        raise FailedPrecondition(f"{where}: metric {manifest.metric!r} is not served (only ip)")


def mmap_flags(factory: str) -> int:
    """What Faiss can memory-map: IVF inverted lists (IO_FLAG_MMAP) or the codes of an
    IndexFlatCodes (Flat, SQ, PQ; HNSW's vector storage) (IO_FLAG_MMAP_IFC). The two cannot be
    combined (faiss 1.15: the IVF reader then refuses the mapped reader)."""
    return faiss.IO_FLAG_MMAP if "IVF" in factory.upper() else faiss.IO_FLAG_MMAP_IFC


def _read_index(path: str, manifest: ShardManifest, where: str, mmap: bool = False) -> Any:
    """``mmap``: map what Faiss can (IVF lists, Flat/SQ/PQ codes) instead of reading it, so
    processes opening the same file share its pages; the file is already verified."""
    if not mmap:
        check_checksum(path, manifest.checksum, where)
    try:
        index = faiss.read_index(path, mmap_flags(manifest.factory) if mmap else 0)
    except RuntimeError as exc:
        raise FailedPrecondition(f"{where}: Faiss cannot read index.faiss: {exc}") from exc
    if index.d != manifest.dim or index.ntotal != manifest.count:
        raise FailedPrecondition(
            f"{where}: index holds {index.ntotal} x {index.d}, manifest says "
            f"{manifest.count} x {manifest.dim}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise FailedPrecondition(f"{where}: index metric is not inner product")
    return index


def _enable_reconstruct(index: Any) -> None:
    """GetVectors reconstructs by image id: IVF indexes need an id -> (list, offset) map; the
    hash-table kind because image ids are arbitrary 63-bit values (IDMap2 has its own)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]


def _read_ids(path: str, manifest: ShardManifest, where: str) -> tuple[np.ndarray, pa.Array]:
    table = pq.read_table(path, columns=["image_id", "key"])
    ids = table.column("image_id").to_numpy().astype(np.int64)
    if len(ids) != manifest.count:
        raise FailedPrecondition(f"{where}: ids.parquet has {len(ids)} rows, not {manifest.count}")
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise FailedPrecondition(f"{where}: ids.parquet is not sorted by unique image_id")
    return ids, table.column("key").combine_chunks()


def _read_metadata(uri: str, ids: np.ndarray, keys: pa.Array, where: str) -> pa.Table:
    """The shard's metadata columns aligned with ``ids``; an index built before metadata
    existed still gets ``image_id`` and ``key`` so filters on them work everywhere."""
    base = pa.table({"image_id": pa.array(ids, pa.int64()), "key": keys})
    if not storage.exists(uri):
        return base
    with tempfile.TemporaryDirectory(prefix="cbir-meta-") as tmp:
        table = pq.read_table(fetch(uri, tmp))
    if "image_id" not in table.column_names or not np.array_equal(
            table.column("image_id").to_numpy(), ids):
        raise FailedPrecondition(f"{where}: metadata.parquet rows do not match ids.parquet")
    extra = [n for n in table.column_names if n not in ("image_id", "key")]
    for name in extra:
        base = base.append_column(table.schema.field(name), table.column(name))
    return base.combine_chunks()


def load_shard(index_uri: str, shard: int, expect: Expectations,
               cache_dir: str = "") -> LoadedIndex:
    """Load and verify ``index_uri``/shard=NNN/; raise a typed error saying what is wrong.
    ``cache_dir``: keep the files there (shared by the workers) and memory-map the index."""
    where = index_layout.shard_uri(index_uri, shard)
    manifest_uri = storage.join(where, INDEX_MANIFEST)
    if not storage.exists(manifest_uri):
        raise NotFound(f"no index for shard {shard} at {index_uri}: {manifest_uri} is missing")
    manifest = read_manifest(manifest_uri, ShardManifest)
    if manifest.shard != shard:
        raise FailedPrecondition(f"{where}: manifest is for shard {manifest.shard}, not {shard}")
    check_expectations(manifest, expect, where)
    uris = {name: storage.join(where, name)
            for name in (index_layout.INDEX_FILE, index_layout.IDS_FILE)}
    with tempfile.TemporaryDirectory(prefix="cbir-shard-") as tmp:
        if cache_dir:
            local = cached_version(cache_dir, manifest.checksum, uris,
                                   lambda path: check_checksum(path, manifest.checksum, where))
            paths = {name: str(local / name) for name in uris}
        else:
            paths = {name: fetch(uri, tmp) for name, uri in uris.items()}
        index_path = paths[index_layout.INDEX_FILE]
        index = _read_index(index_path, manifest, where, mmap=bool(cache_dir))
        index_bytes = os.path.getsize(index_path)  # ~ its size in RAM
        ids, keys = _read_ids(paths[index_layout.IDS_FILE], manifest, where)
    metadata = _read_metadata(storage.join(where, index_layout.METADATA_FILE), ids, keys, where)
    _enable_reconstruct(index)
    memory = index_bytes + int(ids.nbytes) + int(metadata.nbytes)
    log.info("loaded %s: %d x %d %s (%s%s)", where, manifest.count, manifest.dim,
             manifest.factory, manifest.index_version, ", memory-mapped" if cache_dir else "")
    return LoadedIndex(index, manifest, index_uri, ids, keys, memory, metadata)


class IndexStore:
    """The serving version, plus the previous one for a grace period after a swap.

    Swapping is one reference assignment under a lock. Keeping the previous version lets a
    coordinator that pinned a query to it (because another shard does not have the new version
    yet) still get an answer from this replica while a roll is under way.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._current: LoadedIndex | None = None
        self._previous: LoadedIndex | None = None
        self._previous_until = 0.0
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def current(self) -> LoadedIndex:
        current = self._current
        if current is None:
            raise Unavailable("index not loaded yet")
        return current

    def previous(self) -> LoadedIndex | None:
        """The previous version while its grace period lasts (then it is dropped)."""
        with self._lock:
            if self._previous is not None and self._clock() >= self._previous_until:
                log.info("dropping previous index version %s", self._previous.version)
                self._previous = None
            return self._previous

    def get(self, version: str = "") -> LoadedIndex:
        """The index for a search pinned to ``version`` ("" = whatever is serving)."""
        current = self.current()
        if not version or version == current.version:
            return current
        previous = self.previous()
        if previous is not None and previous.version == version:
            return previous
        raise FailedPrecondition(
            f"index version {version!r} requested, {current.version!r} is serving"
        )

    def held_versions(self) -> list[str]:
        """Serving version first, then the kept previous one."""
        if self._current is None:
            return []
        previous = self.previous()
        return [self._current.version, *([previous.version] if previous is not None else [])]

    def swap(self, new: LoadedIndex, keep_previous_s: float = 0.0) -> LoadedIndex | None:
        with self._lock:
            old, self._current = self._current, new
            if old is not None and old.version != new.version and keep_previous_s > 0:
                self._previous, self._previous_until = old, self._clock() + keep_previous_s
            elif self._previous is not None and self._previous.version == new.version:
                self._previous = None  # rolled back to it: it is the current one now
        return old
