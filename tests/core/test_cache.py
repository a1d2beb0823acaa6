"""The byte-budget LRU cache and its keys: bounded by bytes, least recently used out first,
and a key that differs in any dependency (version, log position, filter, k) never hits."""

from __future__ import annotations

import threading

from cbir.cache import AnswerKey, ByteBudgetCache, digest


def _key(**changes: object) -> AnswerKey:
    base = {"query": digest("vector", b"\x00" * 16), "k": 10, "params": (("nprobe", 8),),
            "filter_text": "", "index_version": "v1", "log_positions": (3, 5)}
    base.update(changes)
    return AnswerKey(**base)  # type: ignore[arg-type]


def test_budget_in_bytes_and_lru_order() -> None:
    cache: ByteBudgetCache[bytes] = ByteBudgetCache(100, len)
    cache.put("a", b"x" * 40)
    cache.put("b", b"x" * 40)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", b"x" * 40)  # over budget: b (least recent) goes
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    stats = cache.stats()
    assert stats.bytes <= 100 and stats.entries == 2
    assert (stats.hits, stats.misses) == (3, 1)


def test_value_larger_than_budget_is_not_cached() -> None:
    cache: ByteBudgetCache[bytes] = ByteBudgetCache(10, len)
    cache.put("big", b"x" * 11)
    assert cache.get("big") is None


def test_disabled_cache_never_hits() -> None:
    cache: ByteBudgetCache[bytes] = ByteBudgetCache(0, len)
    cache.put("a", b"x")
    assert cache.get("a") is None and not cache.enabled


def test_every_dependency_is_part_of_the_key() -> None:
    cache: ByteBudgetCache[str] = ByteBudgetCache(1000, len)
    cache.put(_key(), "answer")
    assert cache.get(_key()) == "answer"
    for change in (
        {"index_version": "v2"}, {"log_positions": (4, 5)}, {"filter_text": "width > 3"},
        {"k": 11}, {"params": (("nprobe", 16),)}, {"query": digest("image", b"\x00" * 16)},
    ):
        assert cache.get(_key(**change)) is None, change


def test_digest_separates_kinds_and_payloads() -> None:
    assert digest("vector", b"a") != digest("image", b"a")
    assert digest("vector", b"a") != digest("vector", b"b")
    assert digest("vector", b"a") == digest("vector", b"a")


def test_concurrent_use_stays_within_budget() -> None:
    cache: ByteBudgetCache[bytes] = ByteBudgetCache(1000, len)

    def work(t: int) -> None:
        for i in range(500):
            cache.put((t, i % 50), b"x" * (i % 40 + 1))
            cache.get((t, (i * 7) % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.stats().bytes <= 1000
    assert cache.stats().hits + cache.stats().misses == 2000
