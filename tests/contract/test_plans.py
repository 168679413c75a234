"""Query plans: PostgreSQL's must not depend on statistics gathered when a batch looked different; SQLite's releases
of leases must not read every request the data dir ever held."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from contract_helpers import make_batch, ok

from freight.domain.batches import BatchStatus
from freight.store.common.batches import REFRESH_STATS_AT
from freight.store.queries import queries


def results_plan(url: str, batch_id: str, after_idx: int) -> str:
    sql = queries("postgres")["results"]
    with psycopg.connect(url) as c:
        from freight.store.postgres.database import PostgresTx

        text = PostgresTx(c, {"results": sql})._q["results"]
        rows = c.execute("EXPLAIN " + text, {"batch_id": batch_id, "after_idx": after_idx, "limit": 100}).fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.postgres
def test_a_big_batch_reads_its_results_by_key_once_finalizing(pg_url: str) -> None:
    """start_batch refreshed the planner's figures while every request was pending; by the time the
    results are read every one is done. Without fresh figures PostgreSQL took the results query for a
    one-row match and scanned and sorted the whole table for every page (a cost that grows with the
    table, for each of a batch's pages): moving to finalizing refreshes them."""
    from freight.store.postgres import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("TRUNCATE batches, requests")
    store = PostgresStore(pg_url, pool_size=2)
    try:
        n = REFRESH_STATS_AT + 1000
        b = make_batch(store, n)
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("ANALYZE requests")  # as start_batch leaves them: every request pending
            c.execute("UPDATE requests SET state = 2, status_code = 200, response_body = '\\x7b7d'")
        assert "Seq Scan" in results_plan(pg_url, b.id, -1), "the stale figures' plan (the case this is about)"
        assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 10) is not None
        plan = results_plan(pg_url, b.id, -1)
        assert "requests_pkey" in plan and "Seq Scan" not in plan, plan
    finally:
        store.close()


@pytest.mark.parametrize("name", ["release_all_leases", "release_leases_of"])
def test_giving_leases_back_reads_only_the_open_requests_of_batches_not_ended_sqlite(tmp_path: Path, name: str) -> None:
    """A SQLite data dir's engine releases every lease when it starts, and each stopping process its own.
    Running requests exist only in batches not ended, so both are found through ``requests_open``; a plain
    ``WHERE state = running`` read every request the data dir ever held, at each start and stop of
    ``freight run`` (40 ms per 150,000 requests of history, twice per run)."""
    import sqlite3

    from freight.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "t.db", synchronous="OFF")
    try:
        ended = make_batch(store, 300, "batch_" + "e" * 24)
        store.close_unstarted(ended.id, ok(), include_running=True)
        assert store.set_status(ended.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 10) is not None
        live = make_batch(store, 50, "batch_" + "l" * 24)
        store.claim(live.id, "me", 1_000.0, 1000, 10, 5)
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "t.db") as c:
        c.execute("ANALYZE")  # the planner's figures, as PRAGMA optimize gathers them
        plan = [row[3] for row in c.execute("EXPLAIN QUERY PLAN " + queries("sqlite")[name], {"owner": "me"})]
    assert not any(step.startswith("SCAN requests") for step in plan), plan
    assert any("requests_open" in step for step in plan), plan
