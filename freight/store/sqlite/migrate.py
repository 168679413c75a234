"""Apply freight's numbered migrations to a SQLite database (on every open: idempotent).

A data dir made before numbered migrations (freight 0.1, ``PRAGMA user_version`` ≤ 2, no
``freight_migrations`` table) is adopted as version 1: the columns version 1 may lack are added,
then migration 0001 (all ``IF NOT EXISTS``) fills in what else is missing, and is recorded.
"""

from __future__ import annotations

import sqlite3
import time

from freight.store.migrations import MIGRATIONS_TABLE, Migration, pending

#: Columns that data dirs made before numbered migrations may lack: (table, column, declaration).
_PRE_MIGRATION_COLUMNS = (
    ("files", "lines", "INTEGER"),
    ("files", "idempotency_key", "TEXT"),
)
_TABLE = (f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
          "applied_at REAL NOT NULL)")


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def applied(conn: sqlite3.Connection) -> set[int]:
    if MIGRATIONS_TABLE not in _tables(conn):
        return set()
    return {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}


def _script(mig: Migration, prelude: str = "") -> str:
    record = (f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) "
              f"VALUES ({mig.version}, '{mig.name}', {time.time()!r});")
    return f"BEGIN IMMEDIATE;\n{_TABLE};\n{prelude}\n{mig.sql}\n;\n{record}\nCOMMIT;"


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply what is missing; the versions applied now."""
    done = applied(conn)
    where = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main" and row[2]),
                 "the database")
    todo = pending("sqlite", done, where)
    out = []
    for mig in todo:
        prelude = ""
        if mig.version == 1 and "batches" in _tables(conn):
            prelude = _pre_migration_columns(conn)
        try:
            conn.executescript(_script(mig, prelude))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        out.append(mig.version)
    return out


def _pre_migration_columns(conn: sqlite3.Connection) -> str:
    statements = []
    for table, column, declaration in _PRE_MIGRATION_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            statements.append(f"ALTER TABLE {table} ADD COLUMN {column} {declaration};")
    return "\n".join(statements)
