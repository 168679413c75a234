"""KeyStore."""

from __future__ import annotations

from freight.domain.keys import ApiKey
from freight.ports import Store


def test_api_keys_keep_a_hash_and_can_be_revoked(store: Store) -> None:
    assert not store.has_api_keys() and store.list_api_keys() == []
    store.insert_api_key(ApiKey("0123456789ab", "team", 5), "ab" * 32)
    store.insert_api_key(ApiKey("ba9876543210", "other", 6), "cd" * 32)
    assert store.has_api_keys()
    found = store.get_api_key("0123456789ab")
    assert found == (ApiKey("0123456789ab", "team", 5), "ab" * 32)
    assert store.revoke_api_key("0123456789ab", 9) and not store.revoke_api_key("0123456789ab", 10)
    assert store.has_api_keys(), "one key is still live"
    assert store.revoke_api_key("ba9876543210", 11)
    assert not store.has_api_keys()
    assert store.list_api_keys() == [ApiKey("0123456789ab", "team", 5, 9), ApiKey("ba9876543210", "other", 6, 11)]
    assert store.get_api_key("nope") is None
