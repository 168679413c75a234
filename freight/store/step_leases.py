"""``StepLeases`` on the SQLite database of a data dir (its own table and connection).

Every process on the data dir opens it; ``BEGIN IMMEDIATE`` makes each acquire one compare-and-set
under SQLite's write lock, and the busy timeout queues processes that write at the same moment.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from freight.domain.errors import StoreError

_SCHEMA = "CREATE TABLE IF NOT EXISTS step_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL)"


class SqliteStepLeases:
    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 30_000):
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open step leases in {path}: {exc}") from exc

    def acquire(self, name: str, holder: str, now: float, until: float) -> bool:
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO step_leases (name, holder, until) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                    "SET holder=excluded.holder, until=excluded.until "
                    "WHERE step_leases.holder=excluded.holder OR step_leases.until<?",
                    (name, holder, until, now))
            except sqlite3.Error as exc:
                raise StoreError(f"step lease {name}: {exc}") from exc
            return cur.rowcount == 1

    def release(self, name: str, holder: str) -> None:
        with self._lock:
            try:
                self._conn.execute("DELETE FROM step_leases WHERE name=? AND holder=?", (name, holder))
            except sqlite3.Error as exc:
                raise StoreError(f"step lease {name}: {exc}") from exc

    def holder(self, name: str, now: float) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT holder FROM step_leases WHERE name=? AND until>=?",
                                     (name, now)).fetchone()
        return str(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
