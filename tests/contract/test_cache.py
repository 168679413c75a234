"""ResultCache: answers by key, with a TTL and a size cap (SQLite and PostgreSQL)."""

from __future__ import annotations

from freight.ports import CachedAnswer, Store


def test_an_answer_is_found_until_it_expires(store: Store) -> None:
    assert store.get_cached(["k"], 100) == {}
    store.put_cached("k", CachedAnswer(200, b'{"a":1}', 3, 4), now=100, expires_at=150)
    store.put_cached("j", CachedAnswer(201, b"j"), now=100, expires_at=500)
    assert store.get_cached(["k", "j", "other"], 149) == {"k": CachedAnswer(200, b'{"a":1}', 3, 4),
                                                         "j": CachedAnswer(201, b"j")}
    assert store.get_cached(["k", "j"], 150) == {"j": CachedAnswer(201, b"j")}, "k expired at 150"
    assert store.get_cached([], 120) == {}


def test_a_second_put_replaces_the_entry(store: Store) -> None:
    store.put_cached("k", CachedAnswer(200, b"old"), now=100, expires_at=150)
    store.put_cached("k", CachedAnswer(200, b"new", 1, 2), now=120, expires_at=300)
    assert store.get_cached(["k"], 200) == {"k": CachedAnswer(200, b"new", 1, 2)}


def test_eviction_drops_expired_then_oldest_to_fit_the_cap(store: Store) -> None:
    store.put_cached("gone", CachedAnswer(200, b"x" * 10), now=1, expires_at=50)
    for i in range(5):
        store.put_cached(f"k{i}", CachedAnswer(200, b"y" * 100), now=10 + i, expires_at=1000)
    assert store.evict_cache(60, None) == 1
    assert store.get_cached(["gone"], 40) == {}
    assert store.evict_cache(60, 250) == 3, "500 bytes down to 200: the three oldest go"
    assert sorted(store.get_cached([f"k{i}" for i in range(5)], 60)) == ["k3", "k4"]
    assert store.evict_cache(60, 250) == 0
