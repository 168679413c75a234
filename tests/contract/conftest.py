"""The store contract: every test here runs on SQLite and on PostgreSQL.

PostgreSQL: one database per test session (uniquely named, made by migrations, dropped at the
end); its tables are emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import postgres_database

from freight.ports import Store

TABLES = ("files, batches, requests, api_keys, message_batches, lane_subs, lane_items, step_leases, batch_events, "
          "webhook_endpoints, webhook_deliveries, event_cursors, step_failures, project_usage, intake_messages, "
          "result_cache")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from freight.store.postgres.migrate import migrate

    with postgres_database("freight_contract") as url:
        migrate(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "sqlite":
        from freight.store.sqlite import SqliteStore

        s = SqliteStore(tmp_path / "t.db", synchronous="OFF")
    else:
        import psycopg

        from freight.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
        s = PostgresStore(url, pool_size=4)
    yield s
    s.close()
