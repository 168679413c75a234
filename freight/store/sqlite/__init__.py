"""The embedded store: one SQLite database under the data dir (freight/store/sqlite/database.py),
its schema made and brought up to date by numbered migrations when it is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from freight.domain.errors import StoreError
from freight.store.common import SqlStore
from freight.store.sqlite.database import SqliteDatabase
from freight.store.sqlite.migrate import migrate

__all__ = ["SqliteStore"]


class SqliteStore(SqlStore):
    def __init__(self, path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30_000):
        self.path = str(path)
        try:
            db = SqliteDatabase(self.path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        try:
            migrate(db.writer)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot bring the store at {self.path} up to date: {exc}") from exc
        super().__init__(db)
