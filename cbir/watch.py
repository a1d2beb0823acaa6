"""Event-driven ingest: S3 event notifications from an SQS queue become upserts and deletes.

``ObjectCreated:*`` -> upsert of the object's URI (the coordinator fetches and embeds it),
``ObjectRemoved:*`` -> delete. A message is deleted from the queue only after every write it
carries is acknowledged (durable in the write-ahead log); if the writer fails, the messages come
back after the queue's visibility timeout, and redelivery is harmless because an upsert or a
delete of the same key is idempotent. Several events for one key in one poll collapse to the
latest (S3's ``sequencer`` orders them; without one, arrival order). A write that fails for the
object itself (not an image, too large) is permanent: it is logged and counted, and its message
deleted, since retrying cannot help. Messages that are not S3 events stay in the queue for its
redrive policy (a dead-letter queue) to collect.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote_plus

log = logging.getLogger(__name__)

CREATED, REMOVED = "created", "removed"


@dataclass(frozen=True)
class ObjectEvent:
    kind: str  # CREATED | REMOVED
    uri: str  # s3://bucket/key (key URL-decoded)
    order: tuple[int, str]  # (len, hex) of S3's sequencer: compares like the number


@dataclass(frozen=True)
class WriteOutcome:
    uri: str
    ok: bool
    reason: str = ""


class ObjectWriter(Protocol):
    """Where the writes go (the coordinator client). Raises when nothing was acknowledged."""

    def upsert_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]: ...

    def delete_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]: ...


@dataclass
class WatchCounts:
    messages: int = 0
    upserts: int = 0
    deletes: int = 0
    rejected: int = 0  # permanent per-object failures (logged)
    not_events: int = 0  # left in the queue for its dead-letter policy
    failed_polls: int = 0  # the writer failed: messages will be redelivered
    reasons: dict[str, int] = field(default_factory=dict)


def parse_events(body: str) -> list[ObjectEvent] | None:
    """The object events of one message; [] for S3's test event; None if not an S3 event."""
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        return None
    events = [_event(r) for r in records]
    return None if any(e is None for e in events) else [e for e in events if e is not None]


def _event(record: Any) -> ObjectEvent | None:
    try:
        name = str(record["eventName"])
        bucket = str(record["s3"]["bucket"]["name"])
        obj = record["s3"]["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError):
        return None
    if name.startswith("ObjectCreated:"):
        kind = CREATED
    elif name.startswith("ObjectRemoved:"):
        kind = REMOVED
    else:
        return None
    sequencer = str(obj.get("sequencer", ""))
    return ObjectEvent(kind, f"s3://{bucket}/{key}", (len(sequencer), sequencer))


def latest_per_object(events: Sequence[ObjectEvent]) -> dict[str, ObjectEvent]:
    """The last event of each object (by sequencer; ties keep arrival order)."""
    latest: dict[str, ObjectEvent] = {}
    for event in events:
        current = latest.get(event.uri)
        if current is None or event.order >= current.order:
            latest[event.uri] = event
    return latest


class Watcher:
    """Polls one SQS queue and turns its S3 events into acknowledged writes."""

    def __init__(
        self, queue_url: str, writer: ObjectWriter, sqs: Any, wait_s: int = 10,
        max_messages: int = 10,
    ) -> None:
        self.queue_url = queue_url
        self.writer = writer
        self.sqs = sqs
        self.wait_s = wait_s
        self.max_messages = max_messages
        self.counts = WatchCounts()

    def run(self, stop: threading.Event) -> WatchCounts:
        while not stop.is_set():
            self.poll_once()
        return self.counts

    def poll_once(self) -> int:
        """One receive + write + delete round; returns how many messages were received."""
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.max_messages,
            WaitTimeSeconds=self.wait_s,
        )
        messages = reply.get("Messages", [])
        self.counts.messages += len(messages)
        handled, events = self._sort_messages(messages)
        if events and not self._write(latest_per_object(events)):
            return len(messages)
        self._delete(handled)
        return len(messages)

    def _sort_messages(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[str], list[ObjectEvent]]:
        handled: list[str] = []
        events: list[ObjectEvent] = []
        for message in messages:
            parsed = parse_events(str(message.get("Body", "")))
            if parsed is None:
                self.counts.not_events += 1
                log.warning("message %s is not an S3 event; left for the dead-letter queue",
                            message.get("MessageId", "?"))
                continue
            events.extend(parsed)
            handled.append(str(message["ReceiptHandle"]))
        return handled, events

    def _write(self, latest: dict[str, ObjectEvent]) -> bool:
        creates = [u for u, e in latest.items() if e.kind == CREATED]
        removes = [u for u, e in latest.items() if e.kind == REMOVED]
        try:
            outcomes = [*self._call(self.writer.upsert_uris, creates),
                        *self._call(self.writer.delete_uris, removes)]
        except Exception as exc:  # any failure: nothing acknowledged, redelivery will retry
            self.counts.failed_polls += 1
            log.warning("writes not acknowledged (%s); the messages will be redelivered", exc)
            return False
        created = set(creates)
        self.counts.upserts += sum(1 for o in outcomes if o.ok and o.uri in created)
        self.counts.deletes += sum(1 for o in outcomes if o.ok and o.uri not in created)
        for outcome in outcomes:
            if not outcome.ok:
                self.counts.rejected += 1
                self.counts.reasons[outcome.reason] = self.counts.reasons.get(outcome.reason, 0) + 1
                log.warning("%s rejected: %s", outcome.uri, outcome.reason)
        return True

    @staticmethod
    def _call(method: Any, uris: list[str]) -> Sequence[WriteOutcome]:
        return method(uris) if uris else []

    def _delete(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), 10):  # SQS takes 10 entries per batch
            chunk = receipts[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
            )
