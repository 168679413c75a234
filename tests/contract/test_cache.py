"""ResultCache: answers by key, with a TTL and a size cap (SQLite and PostgreSQL)."""

from __future__ import annotations

from freight.ports import CachedAnswer, Store


def test_an_answer_is_found_until_it_expires(store: Store) -> None:
    assert store.get_cached("k", 100) is None
    store.put_cached("k", CachedAnswer(200, b'{"a":1}', 3, 4), now=100, expires_at=150)
    assert store.get_cached("k", 149) == CachedAnswer(200, b'{"a":1}', 3, 4)
    assert store.get_cached("k", 150) is None, "expired at 150"
    assert store.get_cached("other", 120) is None


def test_a_second_put_replaces_the_entry(store: Store) -> None:
    store.put_cached("k", CachedAnswer(200, b"old"), now=100, expires_at=150)
    store.put_cached("k", CachedAnswer(200, b"new", 1, 2), now=120, expires_at=300)
    assert store.get_cached("k", 200) == CachedAnswer(200, b"new", 1, 2)


def test_eviction_drops_expired_then_oldest_to_fit_the_cap(store: Store) -> None:
    store.put_cached("gone", CachedAnswer(200, b"x" * 10), now=1, expires_at=50)
    for i in range(5):
        store.put_cached(f"k{i}", CachedAnswer(200, b"y" * 100), now=10 + i, expires_at=1000)
    assert store.evict_cache(60, None) == 1
    assert store.get_cached("gone", 40) is None
    assert store.evict_cache(60, 250) == 3, "500 bytes down to 200: the three oldest go"
    assert [store.get_cached(f"k{i}", 60) is not None for i in range(5)] == [False, False, False, True, True]
    assert store.evict_cache(60, 250) == 0
