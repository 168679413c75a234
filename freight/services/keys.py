"""API keys: make them, and tell which project a request belongs to.

While no key exists, freight is a single-user server on loopback: every request belongs to the
project ``default``. Once a key exists, every request must carry a valid one; and a process that
has seen a key keeps requiring one, even if every key is revoked later (it never falls back to
open access while it runs).
"""

from __future__ import annotations

from freight.domain import keys
from freight.domain.clock import Clock
from freight.domain.errors import InvalidInput, NotFound
from freight.domain.keys import DEFAULT_PROJECT, ApiKey
from freight.ports import Store


class KeyService:
    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.clock = clock
        self._required = False

    def create(self, project: str) -> tuple[ApiKey, str]:
        """A new key for ``project``: (the key, the token to show once)."""
        try:
            made = keys.new_key(project, int(self.clock.now()))
        except ValueError as exc:
            raise InvalidInput(str(exc), param="project", code="invalid_value") from None
        self.store.insert_api_key(made.key, made.secret_hash)
        self._required = True
        return made.key, made.token

    def list(self) -> list[ApiKey]:
        return self.store.list_api_keys()

    def revoke(self, key_id: str) -> ApiKey:
        parsed = keys.parse_token(key_id)  # the whole key works too
        found = self.store.get_api_key(parsed[0] if parsed else key_id.removeprefix(keys.KEY_PREFIX))
        if found is None:
            raise NotFound(f"No API key with id {key_id!r}.", param="key_id")
        self.store.revoke_api_key(found[0].id, int(self.clock.now()))
        refreshed = self.store.get_api_key(found[0].id)
        assert refreshed is not None
        return refreshed[0]

    def required(self) -> bool:
        """Whether requests must carry a key (sticky: once true, true for this process)."""
        if not self._required and self.store.has_api_keys():
            self._required = True
        return self._required

    def authenticate(self, token: str) -> str | None:
        """The project of a valid, unrevoked key; None for anything else."""
        parsed = keys.parse_token(token.strip())
        if parsed is None:
            return None
        key_id, secret = parsed
        found = self.store.get_api_key(key_id)
        if found is None:
            # Compare anyway, so an unknown id costs about the same as a wrong secret.
            keys.secret_matches(secret, "0" * 64)
            return None
        key, stored_hash = found
        if not keys.secret_matches(secret, stored_hash) or key.revoked_at is not None:
            return None
        return key.project

    def project_for(self, token: str | None) -> str | None:
        """The project a request with this key (or none) belongs to; None: refuse it (401)."""
        if not self.required():
            return DEFAULT_PROJECT
        if not token:
            return None
        return self.authenticate(token)
