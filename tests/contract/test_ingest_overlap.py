"""Two ingests of one batch may overlap (a stale batch-steps holder still validating while the new
holder validates too): neither may start the batch without all its requests stored, and neither may
clear the requests of a batch the other started (found by tests/chaos_postgres.py: a batch in
progress with its total and no requests)."""

from __future__ import annotations

from contract_helpers import NOW, new_batch

from freight.domain.batches import BatchStatus
from freight.ports import NewRequest, Store


def rows(n: int) -> list[NewRequest]:
    return [NewRequest(i, i + 1, f"c{i}", b'{"model":"m"}') for i in range(n)]


def test_a_batch_starts_only_with_all_its_requests_stored(store: Store) -> None:
    b = new_batch()
    store.insert_batch(b, None)
    store.insert_requests(b.id, rows(3))
    store.clear_requests(b.id)  # the other ingest cleared what this one wrote
    assert not store.start_batch(b.id, 3, "m", int(NOW)), "no requests stored: not started"
    store.insert_requests(b.id, rows(3))
    assert store.start_batch(b.id, 3, "m", int(NOW))


def test_a_started_batchs_requests_are_not_cleared(store: Store) -> None:
    b = new_batch()
    store.insert_batch(b, None)
    store.insert_requests(b.id, rows(3))
    assert store.start_batch(b.id, 3, "m", int(NOW))
    # a stale ingest starting over is told there is nothing to do (it collided inserting the same rows)
    assert store.clear_requests(b.id) is False
    assert store.restart_ingest(b.id) is False
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.IN_PROGRESS and got.request_counts.total == 3
    assert store.open_counts(b.id) == (3, 0), "its requests are still there"


def test_a_batch_cancelled_while_validating_and_started_keeps_its_requests(store: Store) -> None:
    b = new_batch()
    store.insert_batch(b, None)
    store.insert_requests(b.id, rows(2))
    assert store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.CANCELLING, int(NOW)) is not None
    assert store.start_batch(b.id, 2, "m", int(NOW))
    store.clear_requests(b.id)
    assert store.open_counts(b.id) == (2, 0)
