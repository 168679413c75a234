"""``ResultCache`` over named SQL (cache.sql)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from freight.ports.cache import CachedAnswer

from .base import Base

#: Entries looked at per round when dropping the oldest to fit the size cap.
_EVICT_ROUND = 500


class CacheMixin(Base):
    def get_cached(self, keys: Sequence[str], now: float) -> dict[str, CachedAnswer]:
        if not keys:
            return {}
        with self._db.read() as tx:
            rows = tx.all("get_cached", {"keys": tx.array(list(keys)), "now": now})
        return {str(r["key"]): CachedAnswer(r["status_code"], bytes(r["body"]), r["input_tokens"], r["output_tokens"])
                for r in rows}

    def put_cached(self, entries: Mapping[str, CachedAnswer], now: float, expires_at: float) -> None:
        if not entries:
            return
        ordered = sorted(entries.items())  # one order for every writer: no deadlock between two
        answers = [a for _, a in ordered]
        columns: dict[str, Sequence[object]] = {
            "key": [key for key, _ in ordered], "status_code": [a.status_code for a in answers],
            "body": [a.body for a in answers], "input_tokens": [a.input_tokens for a in answers],
            "output_tokens": [a.output_tokens for a in answers], "bytes": [len(a.body) for a in answers],
            "now": [now] * len(answers), "expires_at": [expires_at] * len(answers)}
        with self._db.write() as tx:
            tx.bulk("put_cached", columns)

    def evict_cache(self, now: float, max_bytes: int | None) -> int:
        with self._db.write() as tx:
            dropped = tx.run("evict_expired", {"now": now})
            if max_bytes is None:
                return dropped
            row = tx.one("cache_bytes")
            excess = int(row["total"]) - max_bytes if row is not None else 0
            while excess > 0:
                oldest = tx.all("cache_oldest", {"limit": _EVICT_ROUND})
                if not oldest:
                    break
                for r in oldest:
                    if excess <= 0:
                        break
                    tx.run("delete_cached", {"key": r["key"]})
                    excess -= int(r["bytes"])
                    dropped += 1
        return dropped
