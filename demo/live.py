"""The demo's live-index part: a photo that was not in the bucket at backfill time is uploaded,
upserted through the coordinator (which fetches and embeds it) and becomes the top hit of its own
edited copy; deleted, it disappears again. Times are from the acknowledgement to the search that
first shows the change."""

from __future__ import annotations

import time
from collections.abc import Callable

from cbir import storage
from cbir.client import CoordinatorClient, UpsertSpec
from demo.photos import Photo, edited_copies, encode_jpeg

WAIT_S = 10.0


def _top_key(client: CoordinatorClient, image: bytes) -> str:
    hits = client.search_image(image, k=1).hits
    return hits[0].key if hits else ""


def _seconds_until(check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` holds (WAIT_S at most)."""
    start = time.monotonic()
    while not check() and time.monotonic() - start < WAIT_S:
        time.sleep(0.02)
    return time.monotonic() - start


def live_update(coordinator: str, photo: Photo, bucket: str, say: Callable[[str], None]) -> None:
    name = f"photos/{photo.name}.jpg"
    key = f"s3://{bucket}/{name}"
    query = dict(edited_copies(photo))["crop"]
    with CoordinatorClient(coordinator) as client:
        before = _top_key(client, query)
        storage.s3_client().put_object(Bucket=bucket, Key=name, Body=encode_jpeg(photo.pixels))
        written = client.upsert([UpsertSpec(key)])[0]
        if not written.ok:
            say(f"live: upsert of {key} failed: {written.reason}")
            return
        shown = _seconds_until(lambda: _top_key(client, query) == key)
        found = _top_key(client, query) == key
        say(f"live: uploaded {photo.name}.jpg (its crop's top hit was "
            f"{before.rsplit('/', 1)[-1] or 'nothing'}); upsert ok (shard {written.shard}, log "
            f"entry {written.seq}); top hit of its crop is "
            f"{'now itself' if found else 'STILL NOT itself'} after {shown * 1000:.0f} ms")
        deleted = client.delete(keys=[key])[0]
        gone = _seconds_until(lambda: _top_key(client, query) != key)
        still = _top_key(client, query) == key
        say(f"live: delete {deleted.status}; {photo.name}.jpg "
            f"{'STILL the top hit' if still else 'gone from the results'} after "
            f"{gone * 1000:.0f} ms")
