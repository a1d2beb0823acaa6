"""The coordinator's cache rules (pure; the system-level tests are in test_filters_caches.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from cbir.merge import MergedHit
from cbir.wal import Delete, ShardLog
from coordinator.caching import QueryCaches, query_digest
from coordinator.config import CacheConfig
from coordinator.log_positions import LogPositions, LogTail
from coordinator.queries import IndexParams
from coordinator.search import SearchAnswer

HITS = [MergedHit(7, "s3://b/k", 0.9, 1)]


def caches() -> tuple[QueryCaches, Counter]:
    lookups = Counter("lookups", "", ["cache", "result"], registry=CollectorRegistry())
    return QueryCaches(CacheConfig(), lookups), lookups


def test_keys_name_query_k_params_filter_version_and_positions() -> None:
    c, _ = caches()
    q = query_digest(None, [0.5, 0.25], None, False)
    key = c.answer_key(q, 10, IndexParams(), "pct < 3", "v1", 2)
    assert key is not None and key.log_positions == (0, 0)
    others = [c.answer_key(q, 11, IndexParams(), "pct < 3", "v1", 2),
              c.answer_key(q, 10, IndexParams(nprobe=4), "pct < 3", "v1", 2),
              c.answer_key(q, 10, IndexParams(), "pct < 4", "v1", 2),
              c.answer_key(q, 10, IndexParams(), "pct < 3", "v2", 2),
              c.answer_key(query_digest(None, [0.5, 0.5], None, False), 10, IndexParams(),
                           "pct < 3", "v1", 2)]
    assert key not in others and len(set(others)) == len(others)
    assert c.answer_key(q, 10, IndexParams(), "", None, 2) is None  # no pinned version yet
    assert query_digest(None, None, 5, True) != query_digest(None, None, 5, False)
    assert query_digest(b"img", None, None, False) != query_digest(None, None, None, False)


def test_only_complete_answers_in_the_keys_version_are_stored() -> None:
    c, lookups = caches()
    key = c.answer_key("q", 10, IndexParams(), "", "v1", 2)
    c.put_answer(key, SearchAnswer(HITS, (1,), "v1", "ip"))  # partial
    c.put_answer(key, SearchAnswer(HITS, (), "v2", "ip"))  # another version than the key's
    assert c.get_answer(key) is None
    good = SearchAnswer(HITS, (), "v1", "ip")
    c.put_answer(key, good)
    assert c.get_answer(key) is good
    assert lookups.labels("result", "hit")._value.get() == 1
    assert lookups.labels("result", "miss")._value.get() == 1


def test_embeddings_by_content_and_a_zero_budget_is_off() -> None:
    c, _ = caches()
    digest, vector = c.get_embedding(b"jpeg bytes")
    assert vector is None
    c.put_embedding(digest, np.ones(4, np.float32))
    assert np.array_equal(c.get_embedding(b"jpeg bytes")[1], np.ones(4))  # type: ignore[arg-type]
    off = QueryCaches(CacheConfig(0, 0))
    assert off.answer_key("q", 10, IndexParams(), "", "v1", 2) is None
    off.put_embedding(digest, np.ones(4, np.float32))
    assert off.get_embedding(b"jpeg bytes")[1] is None


def positioned() -> tuple[QueryCaches, LogPositions]:
    positions = LogPositions(2)
    return QueryCaches(CacheConfig(), positions=positions), positions


def test_lookups_use_the_known_positions_and_a_known_write_changes_the_key() -> None:
    c, positions = positioned()
    key = c.answer_key("q", 10, IndexParams(), "", "v1", 2)
    assert key is not None and key.log_positions == (0, 0)
    c.put_answer(key, SearchAnswer(HITS, (), "v1", "ip", (0, 0)))
    assert c.get_answer(c.answer_key("q", 10, IndexParams(), "", "v1", 2)) is not None
    positions.learn(1, 4)  # e.g. this coordinator acknowledged entry 4 of shard 1
    after = c.answer_key("q", 10, IndexParams(), "", "v1", 2)
    assert after is not None and after.log_positions == (0, 4)
    assert c.get_answer(after) is None
    positions.learn(1, 3)  # positions never move back
    assert positions.known == (0, 4)


def test_an_answer_is_stored_under_what_its_replicas_reported() -> None:
    c, positions = positioned()
    positions.learn(0, 5)
    key = c.answer_key("q", 10, IndexParams(), "", "v1", 2)
    # A lagging replica of shard 0 answered at 4: never served for the known state 5.
    c.put_answer(key, SearchAnswer(HITS, (), "v1", "ip", (4, 0)))
    assert c.get_answer(c.answer_key("q", 10, IndexParams(), "", "v1", 2)) is None
    # A replica ahead of what was known teaches the position; the answer is stored under it.
    c.put_answer(key, SearchAnswer(HITS, (), "v1", "ip", (6, 2)))
    assert positions.known == (6, 2)
    hit = c.get_answer(c.answer_key("q", 10, IndexParams(), "", "v1", 2))
    assert hit is not None and hit.log_positions == (6, 2)


def test_an_image_id_answer_is_as_old_as_its_query_vector() -> None:
    c, positions = positioned()
    positions.learn_all((3, 3))
    key = c.answer_key("id:7:0", 10, IndexParams(), "", "v1", 2)
    # The search answered at (3, 3) but the stored vector came from shard 1 at position 2:
    # the vector may predate entry 3, so the answer must not be served for state (3, 3).
    c.put_answer(key, SearchAnswer(HITS, (), "v1", "ip", (3, 3)), source=(1, 2))
    assert c.get_answer(c.answer_key("id:7:0", 10, IndexParams(), "", "v1", 2)) is None
    c.put_answer(key, SearchAnswer(HITS, (), "v1", "ip", (3, 3)), source=(1, 3))
    assert c.get_answer(c.answer_key("id:7:0", 10, IndexParams(), "", "v1", 2)) is not None


def test_the_log_tail_learns_entries_written_by_others(tmp_path: Path) -> None:
    positions = LogPositions(2)
    tail = LogTail(str(tmp_path), positions)
    asyncio.run(tail.poll())
    assert positions.known == (0, 0)
    other = ShardLog(str(tmp_path), 1)  # another coordinator's writer
    for _ in range(3):
        other.append([Delete(5)], "m")
    asyncio.run(tail.poll())
    assert positions.known == (0, 3)
    other.append([Delete(7)], "m")
    asyncio.run(tail.poll())
    assert positions.known == (0, 4)


def test_vector_digest_is_the_same_for_a_proto_field_and_a_list_and_never_raises() -> None:
    from protos import cbir_pb2

    field = cbir_pb2.FloatVector(values=[0.5, -2.0, 3.25]).values
    assert query_digest(None, field, None, False) == query_digest(None, [0.5, -2.0, 3.25],
                                                                  None, False)
    # Beyond float32: refused later by the query checks; the digest must not fail first.
    assert query_digest(None, [3e39, 0.0], None, False) == query_digest(
        None, [float("inf"), 0.0], None, False)
