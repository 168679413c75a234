"""ResultCache: answers by key, with a TTL and a size cap (SQLite and PostgreSQL)."""

from __future__ import annotations

from freight.ports import CachedAnswer, Store


def test_an_answer_is_found_until_it_expires(store: Store) -> None:
    assert store.get_cached(["k"], 100) == {}
    store.put_cached({"k": CachedAnswer(200, b'{"a":1}', 3, 4)}, now=100, expires_at=150)
    store.put_cached({"j": CachedAnswer(201, b"j")}, now=100, expires_at=500)
    assert store.get_cached(["k", "j", "other"], 149) == {"k": CachedAnswer(200, b'{"a":1}', 3, 4),
                                                         "j": CachedAnswer(201, b"j")}
    assert store.get_cached(["k", "j"], 150) == {"j": CachedAnswer(201, b"j")}, "k expired at 150"
    assert store.get_cached([], 120) == {}
    store.put_cached({}, now=100, expires_at=500)


def test_many_answers_are_stored_in_one_put(store: Store) -> None:
    entries = {f"k{i}": CachedAnswer(200 + i % 2, bytes([i % 256]) * i, i, 2 * i) for i in range(300)}
    store.put_cached(entries, now=100, expires_at=150)
    assert store.get_cached([*entries, "other"], 120) == entries


def test_a_second_put_replaces_the_entry(store: Store) -> None:
    store.put_cached({"k": CachedAnswer(200, b"old"), "j": CachedAnswer(200, b"j")}, now=100, expires_at=150)
    store.put_cached({"k": CachedAnswer(200, b"new", 1, 2)}, now=120, expires_at=300)
    assert store.get_cached(["k", "j"], 200) == {"k": CachedAnswer(200, b"new", 1, 2)}, "j expired, k renewed"


def test_eviction_drops_expired_then_oldest_to_fit_the_cap(store: Store) -> None:
    store.put_cached({"gone": CachedAnswer(200, b"x" * 10)}, now=1, expires_at=50)
    for i in range(5):
        store.put_cached({f"k{i}": CachedAnswer(200, b"y" * 100)}, now=10 + i, expires_at=1000)
    assert store.evict_cache(60, None) == 1
    assert store.get_cached(["gone"], 40) == {}
    assert store.evict_cache(60, 250) == 3, "500 bytes down to 200: the three oldest go"
    assert sorted(store.get_cached([f"k{i}" for i in range(5)], 60)) == ["k3", "k4"]
    assert store.evict_cache(60, 250) == 0
