"""Store contract: claims, fencing, lease reclaim, counters. Runs on every store adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.files import File
from freight.domain.requests import WORKER_LOST, Result
from freight.ports import Completion, NewRequest, Retry
from freight.store.sqlite import SqliteStore

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db")
    yield s
    s.close()


def make_batch(store: SqliteStore, n: int, batch_id: str = "batch_" + "a" * 24, project: str = "p") -> Batch:
    b = Batch(id=batch_id, project=project, endpoint="/v1/embeddings", input_file_id="file-" + "0" * 24,
              completion_window="24h", status=BatchStatus.VALIDATING, created_at=int(NOW), expires_at=int(NOW) + 60)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(i, i + 1, f"c{i}", b'{"model":"m"}') for i in range(n)])
    assert store.start_batch(b.id, n, "m", int(NOW))
    return b


def ok(body: bytes = b"{}") -> Result:
    return Result(status_code=200, body=body, request_id="req_1", input_tokens=3, output_tokens=2)


def test_claim_leases_each_request_once(store: SqliteStore) -> None:
    b = make_batch(store, 10)
    first = store.claim(b.id, "w1", NOW, 30, 4, 5)
    second = store.claim(b.id, "w2", NOW, 30, 100, 5)
    assert [c.idx for c in first] == [0, 1, 2, 3]
    assert [c.idx for c in second] == list(range(4, 10))
    assert store.claim(b.id, "w3", NOW, 30, 100, 5) == []
    assert all(c.attempts == 1 for c in first + second)
    assert len({c.attempt_id for c in first + second}) == 10


def test_only_the_attempt_holding_the_claim_can_store_a_result(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    (old,) = store.claim(b.id, "w1", NOW, 30, 1, 5)
    (new,) = store.claim(b.id, "w2", NOW + 31, 30, 1, 5)  # lease expired: reclaimed with a new attempt
    assert new.attempt_id != old.attempt_id and new.attempts == 2
    assert store.complete(b.id, [Completion(old.idx, old.attempt_id, ok(b'"stale"'))]) == 0
    assert store.complete(b.id, [Completion(new.idx, new.attempt_id, ok(b'"fresh"'))]) == 1
    assert store.complete(b.id, [Completion(new.idx, new.attempt_id, ok(b'"again"'))]) == 0
    (stored,) = store.results(b.id, -1, 10)
    assert stored.result.body == b'"fresh"'
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.request_counts.completed == 1 and batch.request_counts.failed == 0
    assert batch.usage.input_tokens == 3 and batch.usage.output_tokens == 2


def test_live_leases_are_not_reclaimed(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    store.claim(b.id, "w1", NOW, 30, 1, 5)
    assert store.claim(b.id, "w2", NOW + 29, 30, 1, 5) == []


def test_renewed_lease_is_kept(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    (c,) = store.claim(b.id, "w1", NOW, 30, 1, 5)
    assert store.renew(b.id, [c.attempt_id], NOW + 100) == 1
    assert store.claim(b.id, "w2", NOW + 50, 30, 1, 5) == []


def test_lease_lost_on_the_last_attempt_closes_the_request(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    for t in range(2):
        store.claim(b.id, "w", NOW + 100 * t, 30, 1, 2)
    assert store.claim(b.id, "w", NOW + 300, 30, 1, 2) == []
    (stored,) = store.results(b.id, -1, 10)
    assert stored.result.error_code == WORKER_LOST and stored.result.status_code is None
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.request_counts.failed == 1
    assert store.open_counts(b.id) == (0, 0)


def test_retry_later_respects_not_before(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    (c,) = store.claim(b.id, "w", NOW, 30, 1, 5)
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW + 10, "HTTP 503")]) == 1
    assert store.claim(b.id, "w", NOW + 5, 30, 1, 5) == []
    (again,) = store.claim(b.id, "w", NOW + 10, 30, 1, 5)
    assert again.attempts == 2
    # the old attempt can no longer schedule a retry either
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW + 99, "late")]) == 0


def test_claim_only_from_in_progress_batches(store: SqliteStore) -> None:
    b = make_batch(store, 3)
    assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, int(NOW)) is not None
    assert store.claim(b.id, "w", NOW, 30, 10, 5) == []


def test_close_unstarted_counts_and_spares_running(store: SqliteStore) -> None:
    b = make_batch(store, 5)
    running = store.claim(b.id, "w", NOW, 30, 2, 5)
    closed = store.close_unstarted(b.id, Result.never_ran("batch_cancelled", "x"), include_running=False)
    assert closed == 3 and store.open_counts(b.id) == (0, 2)
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in running]) == 2
    batch = store.get_batch("p", b.id)
    assert batch is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)


def test_close_running_fences_out_late_results(store: SqliteStore) -> None:
    b = make_batch(store, 2)
    running = store.claim(b.id, "w", NOW, 30, 2, 5)
    assert store.close_unstarted(b.id, Result.never_ran("batch_expired", "x"), include_running=True) == 2
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in running]) == 0
    assert [r.result.error_code for r in store.results(b.id, -1, 10)] == ["batch_expired"] * 2


def test_results_come_in_input_order_in_pages(store: SqliteStore) -> None:
    b = make_batch(store, 7)
    claimed = store.claim(b.id, "w", NOW, 30, 7, 5)
    store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in reversed(claimed)])
    page1 = store.results(b.id, -1, 4)
    page2 = store.results(b.id, page1[-1].idx, 4)
    assert [r.idx for r in page1 + page2] == list(range(7))
    assert [r.custom_id for r in page1] == ["c0", "c1", "c2", "c3"]


def test_finish_batch_records_files_and_status_atomically(store: SqliteStore) -> None:
    b = make_batch(store, 1)
    f = File(id="file-" + "1" * 24, project="p", filename="o.jsonl", purpose="batch_output", bytes=3,
             created_at=int(NOW))
    assert not store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW), (f, f.id), None)
    assert store.get_file("p", f.id) is None
    store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, int(NOW))
    # refused while a request has no result: its line would be missing from the files
    assert not store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW), (f, f.id), None)
    store.close_unstarted(b.id, ok(), include_running=True)
    assert store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW) + 1, (f, f.id), None)
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED and batch.completed_at == int(NOW) + 1
    assert batch.output_file_id == f.id and batch.error_file_id is None
    assert store.get_file("p", f.id) is not None and store.get_file("other", f.id) is None


def test_a_batch_cancelled_while_validating_gets_its_total_and_keeps_cancelling(store: SqliteStore) -> None:
    b = Batch(id="batch_" + "f" * 24, project="p", endpoint="/v1/embeddings", input_file_id="f",
              completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(i, i + 1, f"x{i}", b"{}") for i in range(3)])
    assert store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.CANCELLING, 3) is not None
    assert store.start_batch(b.id, 3, "m", 4)
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.CANCELLING and got.request_counts.total == 3
    assert got.in_progress_at is None


def test_fail_validation_keeps_errors_and_drops_requests(store: SqliteStore) -> None:
    b = Batch(id="batch_" + "b" * 24, project="p", endpoint="/v1/embeddings", input_file_id="f",
              completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(0, 1, "x", b"{}")])
    assert store.fail_validation(b.id, [BatchError("invalid_url", "bad", "url", 3)], 5)
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.FAILED and got.failed_at == 5
    assert got.errors == [BatchError("invalid_url", "bad", "url", 3)]
    assert store.open_counts(b.id) == (0, 0)


def test_idempotency_key_returns_the_first_batch(store: SqliteStore) -> None:
    b1 = make_batch(store, 1, "batch_" + "c" * 24)
    b2 = Batch(id="batch_" + "d" * 24, project="p", endpoint="/v1/embeddings", input_file_id="f",
               completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2)
    assert store.insert_batch(b2, "k1").id == b2.id
    b3 = Batch(id="batch_" + "e" * 24, project="p", endpoint="/v1/embeddings", input_file_id="f",
               completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2)
    assert store.insert_batch(b3, "k1").id == b2.id
    assert store.get_batch("p", b3.id) is None
    assert store.find_batch("p", "k1") is not None and store.find_batch("q", "k1") is None
    assert b1.id != b2.id


def test_batches_list_newest_first_with_cursor(store: SqliteStore) -> None:
    made = [make_batch(store, 1, f"batch_{i:024x}") for i in range(5)]
    page = store.list_batches("p", after=None, limit=2)
    assert [b.id for b in page.items] == [made[4].id, made[3].id] and page.has_more
    page = store.list_batches("p", after=made[3].id, limit=10)
    assert [b.id for b in page.items] == [made[2].id, made[1].id, made[0].id] and not page.has_more
    assert store.list_batches("other", after=None, limit=10).items == []


def test_release_leases_returns_running_to_pending(store: SqliteStore) -> None:
    b = make_batch(store, 3)
    store.claim(b.id, "w", NOW, 1000, 3, 5)
    assert store.release_leases() == 3
    assert len(store.claim(b.id, "w2", NOW, 30, 10, 5)) == 3
