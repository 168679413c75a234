"""Numbered migrations on PostgreSQL: ``freight migrate`` applies them (idempotent; one process
at a time, under an advisory lock); ``serve`` and ``worker`` refuse a database that is behind."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from freight.domain.errors import ConfigError
from freight.store.migrations import MIGRATIONS_TABLE, latest, pending
from freight.store.postgres.database import connect, describe

_LOCK = "SELECT pg_advisory_lock(hashtext('freight.migrate'))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext('freight.migrate'))"
_TABLE = (f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
          "applied_at DOUBLE PRECISION NOT NULL)")


def applied(conn: psycopg.Connection[Any]) -> set[int] | None:
    """The versions applied, or None when the database has no freight schema at all."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
        if row is None or not row[0]:
            return None
        return {r[0] for r in cur.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}


def migrate(url: str) -> list[int]:
    """Apply the migrations a database lacks, each in its own transaction; the versions applied now."""
    done: list[int] = []
    with connect(url, autocommit=True) as conn:
        conn.execute(_LOCK)
        try:
            conn.execute(_TABLE)
            for mig in pending("postgres", applied(conn) or set(), describe(url)):
                with conn.transaction():
                    conn.execute(mig.sql.encode())
                    conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
                                 (mig.version, mig.name, time.time()))
                done.append(mig.version)
        finally:
            conn.execute(_UNLOCK)
    return done


def check_schema(conn: psycopg.Connection[Any], url: str) -> None:
    """Refuse (ConfigError) a database without freight's schema, or with an older or newer one."""
    have = applied(conn)
    want = latest("postgres")
    hint = f"run `freight migrate --database-url {describe(url)}` (with your credentials) first"
    if not have:
        raise ConfigError(f"{describe(url)} has no freight schema; {hint}.")
    pending("postgres", have, describe(url))  # refuses a schema made by a newer freight (the rule migrate follows)
    top = max(have)
    if top < want or len(have) < want:
        raise ConfigError(f"{describe(url)} has freight's schema version {top}, this freight needs {want}; {hint}.")
