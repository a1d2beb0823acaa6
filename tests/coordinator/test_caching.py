"""The coordinator's cache rules (pure; the system-level tests are in test_filters_caches.py)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from cbir.merge import MergedHit
from coordinator.caching import QueryCaches, query_digest
from coordinator.config import CacheConfig
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
              c.answer_key(q, 10, IndexParams(), "pct < 3", "v1", 2, (0, 1)),
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
