"""S3 event notifications -> writes: parsing and collapsing (unit), and the real loop on moto's
S3 + SQS: bucket notifications reach the queue, writes are made, messages are deleted only after
the writer acknowledged them (a failing writer leaves them for redelivery)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import boto3
import pytest

from cbir import storage
from cbir.watch import (
    CREATED,
    REMOVED,
    ObjectEvent,
    Watcher,
    WriteOutcome,
    latest_per_object,
    parse_events,
)


def _record(name: str, key: str, sequencer: str = "") -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": 1}
    if sequencer:
        obj["sequencer"] = sequencer
    return {"eventName": name, "s3": {"bucket": {"name": "b"}, "object": obj}}


def test_parse_events() -> None:
    body = json.dumps({"Records": [_record("ObjectCreated:Put", "a+b%C3%BC.jpg"),
                                   _record("ObjectRemoved:DeleteMarkerCreated", "c.jpg")]})
    events = parse_events(body)
    assert events is not None
    assert [(e.kind, e.uri) for e in events] == [
        (CREATED, "s3://b/a bü.jpg"), (REMOVED, "s3://b/c.jpg")]
    assert parse_events(json.dumps({"Event": "s3:TestEvent", "Bucket": "b"})) == []
    for bad in ("not json", "[]", json.dumps({"Records": [{"eventName": "x"}]}),
                json.dumps({"Records": [_record("ObjectRestore:Post", "a")]})):
        assert parse_events(bad) is None


def test_latest_event_per_object_wins_by_sequencer() -> None:
    events = [
        ObjectEvent(REMOVED, "s3://b/k", (16, "00000000000000FF")),
        ObjectEvent(CREATED, "s3://b/k", (16, "000000000000000A")),  # older, arrived later
        ObjectEvent(CREATED, "s3://b/j", (0, "")),
        ObjectEvent(REMOVED, "s3://b/j", (0, "")),  # no sequencer: arrival order
    ]
    latest = latest_per_object(events)
    assert latest["s3://b/k"].kind == REMOVED and latest["s3://b/j"].kind == REMOVED


class RecordingWriter:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.upserts: list[str] = []
        self.deletes: list[str] = []

    def upsert_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]:
        if self.fail:
            raise ConnectionError("coordinator unreachable")
        self.upserts.extend(uris)
        return [WriteOutcome(u, not u.endswith(".txt"), "not_an_image" if u.endswith(".txt")
                             else "") for u in uris]

    def delete_uris(self, uris: Sequence[str]) -> Sequence[WriteOutcome]:
        if self.fail:
            raise ConnectionError("coordinator unreachable")
        self.deletes.extend(uris)
        return [WriteOutcome(u, True) for u in uris]


@pytest.fixture
def queue(bucket: str) -> str:
    sqs = boto3.client("sqs")
    # A short visibility timeout so that redelivery happens within the test.
    url = sqs.create_queue(QueueName=f"q-{bucket}",
                           Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    storage.s3_client().put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": arn["Attributes"]["QueueArn"],
            "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return str(url)


def _drain(watcher: Watcher) -> None:
    while watcher.poll_once():
        pass


def _visible(url: str) -> int:
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def test_real_notifications_become_acknowledged_writes(bucket: str, queue: str) -> None:
    s3 = storage.s3_client()
    s3.put_object(Bucket=bucket, Key="new photo.jpg", Body=b"jpeg")
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"text")
    s3.put_object(Bucket=bucket, Key="old.jpg", Body=b"jpeg")
    s3.delete_object(Bucket=bucket, Key="old.jpg")
    boto3.client("sqs").send_message(QueueUrl=queue, MessageBody="not an event")
    writer = RecordingWriter()
    watcher = Watcher(queue, writer, boto3.client("sqs"), wait_s=1)
    _drain(watcher)
    assert f"s3://{bucket}/new photo.jpg" in writer.upserts
    assert f"s3://{bucket}/old.jpg" in writer.deletes + writer.upserts
    assert watcher.counts.rejected >= 1 and watcher.counts.reasons["not_an_image"] >= 1
    assert watcher.counts.not_events == 1
    # Everything but the foreign message was deleted after its acknowledgement.
    assert _visible(queue) == 1


def test_unacknowledged_writes_leave_messages_for_redelivery(bucket: str, queue: str) -> None:
    storage.s3_client().put_object(Bucket=bucket, Key="a.jpg", Body=b"jpeg")
    sqs = boto3.client("sqs")
    failing = Watcher(queue, RecordingWriter(fail=True), sqs, wait_s=1)
    received = 0
    while (n := failing.poll_once()):
        received += n
    assert received >= 1 and failing.counts.failed_polls >= 1
    assert _visible(queue) >= 1  # still there, invisible until the timeout
    time.sleep(2.5)
    writer = RecordingWriter()
    _drain(Watcher(queue, writer, sqs, wait_s=1))
    assert f"s3://{bucket}/a.jpg" in writer.upserts
    assert _visible(queue) == 0
