"""API keys (only the sha256 of each secret is kept)."""

from __future__ import annotations

from typing import Protocol

from freight.domain.keys import ApiKey


class KeyStore(Protocol):
    def insert_api_key(self, key: ApiKey, secret_hash: str) -> None: ...
    def get_api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key (revoked ones too) and the sha256 of its secret."""
        ...

    def list_api_keys(self) -> list[ApiKey]: ...
    def revoke_api_key(self, key_id: str, at: int) -> bool: ...
    def has_api_keys(self) -> bool:
        """Whether any key that is not revoked exists."""
        ...
