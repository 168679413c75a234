"""Numbered migrations: what they build equals the reference schema; old data dirs are adopted;
``migrate`` is idempotent; a PostgreSQL store refuses a database that is not up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from contract_helpers import NOW, a_file
from servers import postgres_database

from freight.domain.errors import ConfigError
from freight.store.migrations import latest, migrations, reference_schema
from freight.store.sqlite import SqliteStore

OLD_SCHEMA = (Path(__file__).parent / "data" / "freight-0.1-schema.sql").read_text()


def sqlite_schema(path: Path) -> dict[str, Any]:
    """Tables' columns and indexes, as SQLite describes them (not as they were written)."""
    with sqlite3.connect(path) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN "
                                          "('sqlite_sequence', 'freight_migrations')")]
        out: dict[str, Any] = {}
        for t in tables:
            indexes = {}
            for _, name, unique, origin, partial in c.execute(f"PRAGMA index_list({t})"):
                cols = [r[2] for r in c.execute(f"PRAGMA index_info({name})")]
                indexes[name if origin == "c" else (origin, *cols)] = (unique, partial, cols)
            out[t] = {"columns": sorted(tuple(r[1:]) for r in c.execute(f"PRAGMA table_info({t})")),
                      "indexes": indexes}
        return out


def test_sqlite_migrations_build_the_reference_schema(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "migrated.db").close()
    with sqlite3.connect(tmp_path / "reference.db") as c:
        c.executescript(reference_schema("sqlite"))
    assert sqlite_schema(tmp_path / "migrated.db") == sqlite_schema(tmp_path / "reference.db")
    with sqlite3.connect(tmp_path / "migrated.db") as c:
        assert [r[0] for r in c.execute("SELECT version FROM freight_migrations")] == [
            m.version for m in migrations("sqlite")]


@pytest.mark.parametrize("version", [1, 2])
def test_a_data_dir_made_before_numbered_migrations_is_adopted(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:  # freight 0.1's schema, as its own code made it
        c.executescript(OLD_SCHEMA)
        if version == 1:  # before file idempotency keys, line counts and API keys
            c.execute("ALTER TABLE files DROP COLUMN lines")
            c.execute("ALTER TABLE files DROP COLUMN idempotency_key")
            c.execute("DROP TABLE api_keys")
        else:
            c.execute("CREATE UNIQUE INDEX files_by_idempotency_key ON files(project, idempotency_key) "
                      "WHERE idempotency_key IS NOT NULL")
        c.execute(f"PRAGMA user_version={version}")
        c.execute("INSERT INTO files (id, project, filename, purpose, bytes, created_at, status, blob_key) "
                  "VALUES ('file-000000000000000000000001', 'p', 'a.jsonl', 'batch', 3, 1, 'processed', 'k')")
    store = SqliteStore(path)
    try:
        old = store.get_file("p", "file-000000000000000000000001")
        assert old is not None and old.lines is None
        f = a_file("file-" + "7" * 24)
        assert store.insert_file(f, f.id, "k").id == f.id
        assert store.insert_file(a_file("file-" + "8" * 24), "x", "k").id == f.id
        assert not store.has_api_keys()
    finally:
        store.close()
    SqliteStore(tmp_path / "reference.db").close()
    assert sqlite_schema(path) == sqlite_schema(tmp_path / "reference.db")
    SqliteStore(path).close()  # and opening it again is a no-op
    with sqlite3.connect(path) as c:
        assert [r[0] for r in c.execute("SELECT version FROM freight_migrations")] == [
            m.version for m in migrations("sqlite")]


# ---- PostgreSQL ---------------------------------------------------------------------------------


def pg_schema(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url) as c:
        columns = sorted(c.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'freight_migrations'"
        ).fetchall())
        indexes = sorted(c.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                                   "AND tablename <> 'freight_migrations'").fetchall())
        constraints = sorted(c.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'freight_migrations'"
        ).fetchall())
    return {"columns": columns, "indexes": indexes, "constraints": constraints}


@pytest.mark.postgres
def test_postgres_migrations_build_the_reference_schema_and_migrate_is_idempotent() -> None:
    import psycopg

    from freight.store.postgres.migrate import migrate

    with postgres_database("freight_mig") as migrated, postgres_database("freight_ref") as reference:
        assert migrate(migrated) == [m.version for m in migrations("postgres")]
        assert migrate(migrated) == []
        with psycopg.connect(reference, autocommit=True) as c:
            c.execute(reference_schema("postgres").encode())
        assert pg_schema(migrated) == pg_schema(reference)


@pytest.mark.postgres
def test_a_postgres_store_refuses_a_database_that_is_not_migrated(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from freight.store.postgres import PostgresStore
    from freight.store.postgres import migrate as pg_migrate

    with postgres_database("freight_old") as url:
        with pytest.raises(ConfigError, match=r"no freight schema.*freight migrate --database-url"):
            PostgresStore(url)
        pg_migrate.migrate(url)
        store = PostgresStore(url)
        store.insert_file(a_file("file-" + "1" * 24), "k")
        assert store.purgeable_files(NOW) == []
        store.close()
        monkeypatch.setattr(pg_migrate, "latest", lambda dialect: latest(dialect) + 1)
        with pytest.raises(ConfigError, match=f"version {latest('postgres')}, this freight needs.*freight migrate"):
            PostgresStore(url)
        monkeypatch.undo()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("INSERT INTO freight_migrations VALUES (%s, 'future', 0)", (latest("postgres") + 1,))
        with pytest.raises(ConfigError, match="newer freight"):
            PostgresStore(url)
        with pytest.raises(ConfigError, match="newer freight"):  # not "up to date"
            pg_migrate.migrate(url)


def test_sqlite_refuses_a_schema_made_by_a_newer_freight(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "db.sqlite").close()
    with sqlite3.connect(tmp_path / "db.sqlite") as c:
        c.execute("INSERT INTO freight_migrations VALUES (?, 'future', 0)", (latest("sqlite") + 1,))
    c.close()
    with pytest.raises(ConfigError, match=rf"db.sqlite has freight's schema version {latest('sqlite') + 1}, made by "
                                          "a newer freight"):
        SqliteStore(tmp_path / "db.sqlite")
