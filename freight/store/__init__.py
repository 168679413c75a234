"""Store adapters: SQLite (the embedded default), PostgreSQL (shared by many processes), and
local blob files. ``open_store`` is the one way to open a store; ``migrate_store`` is ``freight
migrate``."""

from __future__ import annotations

from pathlib import Path

from freight.domain.errors import ConfigError
from freight.ports import Store

SQLITE_FILE = "freight.db"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _check_url(database_url: str) -> None:
    if not database_url.startswith(_POSTGRES_SCHEMES):
        scheme = database_url.split("://", 1)[0] if "://" in database_url else database_url[:20]
        raise ConfigError(f"--database-url must be a PostgreSQL URL (postgresql://user@host:port/database), "
                          f"not {scheme!r}; leave it out to use SQLite in the data dir")


def make_data_dir(data_dir: Path) -> None:
    """The data dir, made where it is missing; a ConfigError naming it where it cannot be (a bare
    FileNotFoundError reached the user)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {data_dir}: cannot keep freight's data there: {exc.strerror or exc}") from None


def open_store(database_url: str | None, data_dir: Path, *, sqlite_synchronous: str = "FULL",
               pool_size: int = 10) -> Store:
    """PostgreSQL at ``database_url`` (its schema must be up to date: ``freight migrate``), or
    SQLite in ``data_dir`` (made or brought up to date here) when there is no URL."""
    if database_url is None:
        from freight.store.sqlite import SqliteStore

        make_data_dir(data_dir)
        return SqliteStore(data_dir / SQLITE_FILE, synchronous=sqlite_synchronous)
    _check_url(database_url)
    from freight.store.postgres import PostgresStore

    return PostgresStore(database_url, pool_size=pool_size)


def migrate_store(database_url: str | None, data_dir: Path) -> tuple[str, list[int], int]:
    """Apply the migrations a database lacks: (where, versions applied now, version it is at)."""
    from freight.store.migrations import latest

    if database_url is None:
        import sqlite3

        from freight.store.sqlite.migrate import migrate

        make_data_dir(data_dir)
        path = data_dir / SQLITE_FILE
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            done = migrate(conn)
        finally:
            conn.close()
        return str(path), done, latest("sqlite")
    _check_url(database_url)
    from freight.store.postgres.database import describe
    from freight.store.postgres.migrate import migrate as pg_migrate

    return describe(database_url), pg_migrate(database_url), latest("postgres")
