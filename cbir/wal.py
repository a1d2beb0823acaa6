"""The write-ahead log of live updates: per shard, an ordered log on the object store.

Layout: ``<root>/shard=NNN/<seq, 20 digits>.arrow``; sequence numbers start at 1 and have no
gaps. Each entry is one immutable object holding a batch of operations (upserts: id, key,
vector, attributes and the object's metadata; deletes: id) in an Arrow IPC stream, created with
a conditional write (``If-None-Match: *`` on S3, an exclusive link locally). The conditional
create is the commit: of several writers racing for the same number exactly one wins, the
others learn the new tail and try the next number, so every shard's log has one total order
however many coordinators write. A writer only ever claims ``tail + 1`` for a tail that exists,
so entry N+1 never exists before entry N, and a reader that applies entries in order never
skips one. A write is acknowledged only after its entry exists; last write per id wins in log
order.

The entry schema only ever grows by nullable columns (the object metadata columns came after
format 1 was in use): a reader takes a column that an older entry lacks as all null, so old
logs keep applying.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa

from cbir import storage
from cbir.errors import FailedPrecondition, InvalidArgument, Unavailable

FORMAT_VERSION = "1"
SEQ_DIGITS = 20
SUFFIX = ".arrow"
UPSERT, DELETE = 0, 1
READ_CHUNK = 256  # entries fetched before the caller consumes them (bounds memory)

_SCHEMA = pa.schema([
    ("op", pa.int8()),
    ("image_id", pa.int64()),
    ("key", pa.string()),
    ("vector", pa.list_(pa.float32())),
    ("attributes", pa.string()),  # JSON object of string attributes, null for none
    # What the coordinator knew of the object (null when it did not: an upsert by vector).
    ("size", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("content_type", pa.string()),
    ("last_modified", pa.timestamp("ms", tz="UTC")),
])


@dataclass(frozen=True)
class ObjectInfo:
    """The metadata an upsert carries besides its attributes: the columns the backfill fills
    from the object (docs/filters.md), None where unknown."""

    size: int | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    last_modified: dt.datetime | None = None  # timezone-aware (UTC)


INFO_COLUMNS = tuple(f.name for f in fields(ObjectInfo))


@dataclass(frozen=True)
class Upsert:
    image_id: int
    key: str
    vector: np.ndarray  # float32 [dim], L2-normalised by the writer
    attributes: dict[str, str] = field(default_factory=dict)
    info: ObjectInfo = ObjectInfo()


@dataclass(frozen=True)
class Delete:
    image_id: int


Operation = Upsert | Delete


@dataclass(frozen=True)
class LogEntry:
    seq: int
    shard: int
    operations: tuple[Operation, ...]
    model_version: str
    created_ms: int


def shard_prefix(root: str, shard: int) -> str:
    return storage.join(root, f"shard={shard:03d}")


def entry_name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}{SUFFIX}"


def seq_of(name: str) -> int | None:
    """The sequence number an entry name encodes, or None for anything else in the folder."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
    return int(stem) if len(stem) == SEQ_DIGITS and stem.isdigit() else None


def _info_columns(ops: Sequence[Operation]) -> dict[str, pa.Array]:
    infos = [o.info if isinstance(o, Upsert) else ObjectInfo() for o in ops]
    return {name: pa.array([getattr(i, name) for i in infos], _SCHEMA.field(name).type)
            for name in INFO_COLUMNS}


def encode_entry(entry: LogEntry) -> bytes:
    ops = entry.operations
    table = pa.table(
        {
            "op": pa.array([UPSERT if isinstance(o, Upsert) else DELETE for o in ops], pa.int8()),
            "image_id": pa.array([o.image_id for o in ops], pa.int64()),
            "key": pa.array([o.key if isinstance(o, Upsert) else None for o in ops], pa.string()),
            "vector": pa.array(
                [o.vector.astype(np.float32).tolist() if isinstance(o, Upsert) else None
                 for o in ops],
                pa.list_(pa.float32()),
            ),
            "attributes": pa.array(
                [json.dumps(o.attributes, sort_keys=True)
                 if isinstance(o, Upsert) and o.attributes else None for o in ops],
                pa.string(),
            ),
            **_info_columns(ops),
        },
        schema=_SCHEMA,
    ).replace_schema_metadata({
        "cbir.wal.format": FORMAT_VERSION,
        "cbir.wal.seq": str(entry.seq),
        "cbir.wal.shard": str(entry.shard),
        "cbir.wal.created_ms": str(entry.created_ms),
        "cbir.model_version": entry.model_version,
    })
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode_entry(data: bytes) -> LogEntry:
    try:
        table = pa.ipc.open_stream(data).read_all()
    except pa.ArrowInvalid as exc:
        raise InvalidArgument(f"not a write-ahead log entry: {exc}") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("cbir.wal.format") != FORMAT_VERSION:
        raise InvalidArgument(f"unsupported log entry format {meta.get('cbir.wal.format')!r}")
    return LogEntry(
        seq=int(meta["cbir.wal.seq"]),
        shard=int(meta["cbir.wal.shard"]),
        operations=tuple(_operations(table)),
        model_version=meta.get("cbir.model_version", ""),
        created_ms=int(meta.get("cbir.wal.created_ms", "0")),
    )


def _operations(table: pa.Table) -> Iterator[Operation]:
    columns = table.to_pydict()
    infos = _infos(columns, table.num_rows)
    for op, image_id, key, vector, attributes, info in zip(
        columns["op"], columns["image_id"], columns["key"], columns["vector"],
        columns["attributes"], infos, strict=True,
    ):
        if op == DELETE:
            yield Delete(int(image_id))
        else:
            yield Upsert(int(image_id), str(key), np.asarray(vector, dtype=np.float32),
                         json.loads(attributes) if attributes else {}, info)


def _infos(columns: dict[str, list[object]], rows: int) -> list[ObjectInfo]:
    """Per row, the object metadata columns; an entry written before they existed has none."""
    present = [name for name in INFO_COLUMNS if name in columns]
    if not present:
        return [ObjectInfo()] * rows
    return [ObjectInfo(**{name: columns[name][row] for name in present})  # type: ignore[arg-type]
            for row in range(rows)]


class ShardLog:
    """One shard's log: append with one total order across writers, read in order."""

    def __init__(self, root: str, shard: int, max_attempts: int = 64) -> None:
        self.root = root
        self.shard = shard
        self.prefix = shard_prefix(root, shard)
        self.max_attempts = max_attempts
        self._next_seq: int | None = None

    def uri_of(self, seq: int) -> str:
        return storage.join(self.prefix, entry_name(seq))

    def last_seq(self, at_least: int = 0) -> int:
        """The highest sequence number present (0 for an empty log). ``at_least`` is a number
        known to exist (or 0): listing starts just after it instead of at the beginning."""
        last = at_least
        start = entry_name(at_least) if at_least > 0 else ""
        for name in storage.list_names_after(self.prefix, start):
            seq = seq_of(name)
            if seq is not None:
                last = max(last, seq)
        return last

    def append(self, operations: Sequence[Operation], model_version: str) -> int:
        """Write one entry and return its sequence number: the write is durable (and
        acknowledged) when this returns. Retries on conflict with other writers."""
        if not operations:
            raise InvalidArgument("a log entry needs at least one operation")
        seq = self._next_seq if self._next_seq is not None else self.last_seq() + 1
        for attempt in range(self.max_attempts):
            entry = LogEntry(seq, self.shard, tuple(operations), model_version,
                             int(time.time() * 1000))
            if storage.create_if_absent(self.uri_of(seq), encode_entry(entry)):
                self._next_seq = seq + 1
                return seq
            # The tail is at least seq - 1 (a claimed number always follows an existing one).
            # If seq itself is not there yet (S3's 409: another write to it is in flight), try
            # seq again rather than seq + 1, which could leave a gap if that write fails.
            seq = self.last_seq(at_least=seq - 1) + 1
            # Jitter spreads writers that keep colliding on the same tail.
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise Unavailable(
            f"write-ahead log of shard {self.shard} is contended: no free entry after "
            f"{self.max_attempts} attempts; retry the write"
        )

    def read_after(self, seq: int) -> Iterator[LogEntry]:
        """Entries with a sequence number above ``seq``, in order, stopping at the first gap
        (an entry being compacted away below a reader is the reader's problem: it must start
        from the folded sequence number recorded in the index manifest)."""
        for found in self._gap_free_after(seq):
            yield decode_entry(storage.read_bytes(self.uri_of(found)))

    def has_entry(self, seq: int) -> bool:
        return storage.exists(self.uri_of(seq))

    def read_range(self, after: int, upto: int, threads: int = 16) -> Iterator[LogEntry]:
        """Exactly the entries ``after + 1 .. upto``, in order (compaction folds this range and
        records ``upto``: one missing or unreadable entry must fail it, not shorten it). One
        listing checks the range is whole; the entries are then fetched ``threads`` at a time
        (one GET each: sequential GETs would make a long range slow)."""
        if upto <= after:
            return
        self._check_whole(after, upto)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(after + 1, upto + 1, READ_CHUNK):
                stop = min(start + READ_CHUNK, upto + 1)
                yield from pool.map(self._read_checked, range(start, stop))

    def _check_whole(self, after: int, upto: int) -> None:
        last = after
        for last in self._gap_free_after(after):
            if last == upto:
                return
        raise FailedPrecondition(
            f"write-ahead log of shard {self.shard} at {self.prefix}: entry {last + 1} is "
            f"missing (needed {after + 1}..{upto})"
        )

    def _gap_free_after(self, seq: int) -> Iterator[int]:
        """The sequence numbers listed after ``seq``, in order, up to the first gap (one
        paginated listing, no reads)."""
        expected = seq + 1
        for name in storage.list_names_after(self.prefix, entry_name(seq) if seq > 0 else ""):
            found = seq_of(name)
            if found is None:
                continue
            if found != expected:
                return
            yield found
            expected += 1

    def _read_checked(self, seq: int) -> LogEntry:
        uri = self.uri_of(seq)
        try:
            entry = decode_entry(storage.read_bytes(uri))
        except InvalidArgument as exc:
            raise FailedPrecondition(f"unreadable log entry {uri}: {exc}") from None
        if entry.seq != seq or entry.shard != self.shard:
            raise FailedPrecondition(
                f"log entry {uri} says it is entry {entry.seq} of shard {entry.shard}")
        return entry
