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


# ---- files' idempotency, per-project quotas, API keys, upgrades --------------------------------


def _file(file_id: str, project: str = "p", lines: int | None = 5) -> File:
    return File(id=file_id, project=project, filename="in.jsonl", purpose="batch", bytes=10, created_at=int(NOW),
                lines=lines)


def test_file_idempotency_key_returns_the_first_file(store: SqliteStore) -> None:
    first = _file("file-" + "1" * 24)
    assert store.insert_file(first, first.id, "up-1").id == first.id
    again = _file("file-" + "2" * 24)
    assert store.insert_file(again, again.id, "up-1").id == first.id
    assert store.get_file("p", again.id) is None and store.file_blob_key(again.id) is None
    other = _file("file-" + "3" * 24, project="q")
    assert store.insert_file(other, other.id, "up-1").id == other.id, "keys are per project"
    assert store.delete_file("p", first.id)
    found = store.find_file("p", "up-1")
    assert found is not None and found.id == first.id, "a deleted file still answers its key (no re-create)"
    assert store.get_file("p", first.id) is None
    plain = _file("file-" + "4" * 24)
    store.insert_file(plain, plain.id)
    store.insert_file(_file("file-" + "5" * 24), "file-" + "5" * 24)  # many files without a key
    got = store.get_file("p", plain.id)
    assert got is not None and got.lines == 5


def test_quota_counts_active_batches_and_queued_requests(store: SqliteStore) -> None:
    from freight.domain.errors import RateLimited
    from freight.ports import Quota

    f = _file("file-" + "6" * 24, lines=7)
    store.insert_file(f, f.id)

    def new(n: int) -> Batch:
        return Batch(id=f"batch_{n:024x}", project="p", endpoint="/v1/embeddings", input_file_id=f.id,
                     completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2)

    quota = Quota(max_active_batches=3, max_queued_requests=20)
    store.insert_batch(new(1), None, quota, 7)  # validating: counts its file's 7 lines
    store.insert_batch(new(2), None, quota, 7)  # 14
    with pytest.raises(RateLimited) as info:
        store.insert_batch(new(3), None, quota, 7)  # 21 > 20
    assert info.value.code == "too_many_queued_requests" and store.get_batch("p", new(3).id) is None
    # once running, a batch counts the requests that have no result yet
    store.insert_requests(new(1).id, [NewRequest(i, i + 1, f"c{i}", b"{}") for i in range(7)])
    store.start_batch(new(1).id, 7, "m", int(NOW))
    claimed = store.claim(new(1).id, "w", NOW, 30, 4, 5)
    store.complete(new(1).id, [Completion(c.idx, c.attempt_id, ok()) for c in claimed])  # 3 + 7 queued
    store.insert_batch(new(3), None, quota, 7)  # 17
    with pytest.raises(RateLimited) as info:
        store.insert_batch(new(4), None, quota, 1)
    assert info.value.code == "too_many_active_batches" and info.value.status_code == 429
    assert store.insert_batch(new(5), None, None, 1).id == new(5).id, "no quota: no limit"
    other = Batch(**{**new(6).__dict__, "project": "q"})
    assert store.insert_batch(other, None, quota, 7).id == other.id, "another project has its own quota"
    # an idempotent replay is answered even at the limit
    store.insert_batch(Batch(**{**new(7).__dict__, "project": "r"}), "k", Quota(max_active_batches=1), 1)
    assert store.insert_batch(Batch(**{**new(8).__dict__, "project": "r"}), "k", Quota(max_active_batches=1),
                              1).id == new(7).id


def test_api_keys_keep_a_hash_and_can_be_revoked(store: SqliteStore) -> None:
    from freight.domain.keys import ApiKey

    assert not store.has_api_keys() and store.list_api_keys() == []
    store.insert_api_key(ApiKey("0123456789ab", "team", 5), "ab" * 32)
    assert store.has_api_keys()
    found = store.get_api_key("0123456789ab")
    assert found == (ApiKey("0123456789ab", "team", 5), "ab" * 32)
    assert store.revoke_api_key("0123456789ab", 9) and not store.revoke_api_key("0123456789ab", 10)
    assert not store.has_api_keys() and store.list_api_keys() == [ApiKey("0123456789ab", "team", 5, 9)]
    assert store.get_api_key("nope") is None


def test_a_version_1_data_dir_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as c:  # make it look like freight 0.1's: no new columns, no api_keys table
        c.execute("DROP INDEX files_by_idempotency_key")
        c.execute("ALTER TABLE files DROP COLUMN lines")
        c.execute("ALTER TABLE files DROP COLUMN idempotency_key")
        c.execute("DROP TABLE api_keys")
        c.execute("PRAGMA user_version=0")
        c.execute("INSERT INTO files (id, project, filename, purpose, bytes, created_at, status, blob_key) "
                  "VALUES ('file-000000000000000000000001', 'p', 'a.jsonl', 'batch', 3, 1, 'processed', 'k')")
    store = SqliteStore(path)
    try:
        old = store.get_file("p", "file-000000000000000000000001")
        assert old is not None and old.lines is None
        f = _file("file-" + "7" * 24)
        assert store.insert_file(f, f.id, "k").id == f.id
        assert not store.has_api_keys()
    finally:
        store.close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    SqliteStore(path).close()  # and opening it again is a no-op
