"""``KeyStore`` over named SQL (keys.sql)."""

from __future__ import annotations

from freight.domain.keys import ApiKey

from .base import Base


class KeysMixin(Base):
    def insert_api_key(self, key: ApiKey, secret_hash: str) -> None:
        with self._db.write() as tx:
            tx.run("insert_api_key", {"id": key.id, "project": key.project, "secret_hash": secret_hash,
                                      "created_at": key.created_at})

    def get_api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._db.read() as tx:
            row = tx.one("api_key", {"id": key_id})
        if row is None:
            return None
        return ApiKey(row["id"], row["project"], row["created_at"], row["revoked_at"]), row["secret_hash"]

    def list_api_keys(self) -> list[ApiKey]:
        with self._db.read() as tx:
            rows = tx.all("list_api_keys")
        return [ApiKey(r["id"], r["project"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_api_key(self, key_id: str, at: int) -> bool:
        with self._db.write() as tx:
            return tx.run("revoke_api_key", {"id": key_id, "at": at}) == 1

    def has_api_keys(self) -> bool:
        with self._db.read() as tx:
            return tx.one("any_live_api_key") is not None
