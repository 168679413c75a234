"""WorkHints: on PostgreSQL, a batch made or changed by one process wakes the others (a hint)."""

from __future__ import annotations

import threading
import time

import pytest
from contract_helpers import new_batch

from freight.domain.batches import BatchStatus
from freight.ports import Store, WorkHints


def drain(woken: threading.Event) -> None:
    """Let the hints already sent arrive, then forget them."""
    time.sleep(0.5)
    woken.clear()


@pytest.mark.postgres
def test_another_process_making_or_changing_a_batch_wakes_a_listener(pg_url: str) -> None:
    import psycopg

    from freight.store.postgres import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("TRUNCATE batches")
    listening, other = PostgresStore(pg_url, pool_size=1), PostgresStore(pg_url, pool_size=1)
    woken = threading.Event()
    try:
        assert isinstance(listening, WorkHints)
        listening.listen_for_work(woken.set)
        b = new_batch()
        deadline = 50
        while not woken.is_set() and deadline:  # the listener connects in its own thread
            other.insert_batch(new_batch(f"batch_{deadline:024x}"), None)
            woken.wait(0.2)
            deadline -= 1
        assert woken.is_set()
        other.insert_batch(b, None)
        drain(woken)
        assert other.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.CANCELLING, 1) is not None
        assert woken.wait(10), "a status change is a hint too"
    finally:
        listening.close()
        other.close()


def test_sqlite_has_no_hints_to_give(store: Store) -> None:
    from freight.store.sqlite import SqliteStore

    assert isinstance(store, WorkHints) != isinstance(store, SqliteStore)
