"""BatchStore: rows, compare-and-set status changes, ingest, quotas, results and the end."""

from __future__ import annotations

import pytest
from contract_helpers import NOW, a_file, make_batch, new_batch, ok

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.errors import RateLimited
from freight.domain.files import File
from freight.domain.requests import Result
from freight.ports import Completion, NewRequest, Quota, Store


def test_a_batch_reads_back_as_inserted(store: Store) -> None:
    b = new_batch()
    b.metadata = {"k": "v"}
    b.output_expires_after_s = 3600
    assert store.insert_batch(b, None) == b
    assert store.get_batch("p", b.id) == b and store.get_batch(None, b.id) == b
    assert store.get_batch("q", b.id) is None and store.get_batch(None, "batch_nope") is None


def test_set_status_is_compare_and_set(store: Store) -> None:
    b = make_batch(store, 1)
    assert store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.FAILED, 9) is None
    got = store.set_status(b.id, [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 9)
    assert got is not None and got.status is BatchStatus.FINALIZING and got.finalizing_at == 9
    assert got.in_progress_at == int(NOW), "other stamps kept"
    assert store.set_status("batch_nope", [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 9) is None
    assert [x.id for x in store.active_batches()] == [b.id]
    assert store.set_status(b.id, [BatchStatus.FINALIZING], BatchStatus.CANCELLING, 10) is not None
    assert store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 11) is not None
    assert store.active_batches() == []


def test_finish_batch_records_files_and_status_atomically(store: Store) -> None:
    b = make_batch(store, 1)
    f = File(id="file-" + "1" * 24, project="p", filename="o.jsonl", purpose="batch_output", bytes=3,
             created_at=int(NOW))
    assert not store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW), (f, f.id), None)
    assert store.get_file("p", f.id) is None
    store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, int(NOW))
    # refused while a request has no result: its line would be missing from the files
    assert not store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW), (f, f.id), None)
    store.close_unstarted(b.id, ok(), include_running=True)
    e = File(id="file-" + "2" * 24, project="p", filename="e.jsonl", purpose="batch_output", bytes=3,
             created_at=int(NOW))
    assert store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW) + 1, (f, f.id),
                              (e, "blob-e"))
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED and batch.completed_at == int(NOW) + 1
    assert batch.output_file_id == f.id and batch.error_file_id == e.id
    assert store.get_file("p", f.id) is not None and store.get_file("other", f.id) is None
    assert store.file_blob_key(e.id) == "blob-e"
    assert not store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, int(NOW) + 2, None, None)


def test_a_batch_cancelled_while_validating_gets_its_total_and_keeps_cancelling(store: Store) -> None:
    b = new_batch("batch_" + "f" * 24)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(i, i + 1, f"x{i}", b"{}") for i in range(3)])
    assert store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.CANCELLING, 3) is not None
    assert store.start_batch(b.id, 3, "m", 4)
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.CANCELLING and got.request_counts.total == 3
    assert got.in_progress_at is None and got.model == "m"
    assert store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 5) is not None
    assert not store.start_batch(b.id, 3, "m", 6), "a terminal batch does not start"


def test_start_batch_moves_validating_to_in_progress(store: Store) -> None:
    b = make_batch(store, 2)
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.IN_PROGRESS and got.in_progress_at == int(NOW)
    assert got.request_counts.total == 2 and got.model == "m"
    assert not store.start_batch(b.id, 2, "m", 5), "only once"
    assert not store.start_batch("batch_nope", 2, "m", 5)


def test_fail_validation_keeps_errors_and_drops_requests(store: Store) -> None:
    b = new_batch("batch_" + "b" * 24)
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(0, 1, "x", b"{}")])
    assert store.fail_validation(b.id, [BatchError("invalid_url", "bad", "url", 3)], 5)
    got = store.get_batch("p", b.id)
    assert got is not None and got.status is BatchStatus.FAILED and got.failed_at == 5
    assert got.errors == [BatchError("invalid_url", "bad", "url", 3)]
    assert store.open_counts(b.id) == (0, 0)
    assert not store.fail_validation(b.id, [], 6)


def test_clear_and_restart_ingest_start_validation_over(store: Store) -> None:
    b = new_batch()
    store.insert_batch(b, None)
    store.insert_requests(b.id, [NewRequest(0, 1, "x", b"{}"), NewRequest(1, 2, "y", b"{}")])
    store.insert_finished_requests(b.id, [(NewRequest(2, 3, "z", b"{}"), Result.never_ran("invalid_request", "no"))])
    got = store.get_batch("p", b.id)
    assert got is not None and got.request_counts.failed == 1
    assert [r.custom_id for r in store.results(b.id, -1, 10)] == ["z"]
    assert store.open_counts(b.id) == (2, 0)
    assert store.restart_ingest(b.id) is True
    got = store.get_batch("p", b.id)
    assert got is not None and got.request_counts.failed == 0 and store.open_counts(b.id) == (0, 0)
    assert store.results(b.id, -1, 10) == []
    store.insert_requests(b.id, [NewRequest(0, 1, "x", b"{}")])
    assert store.clear_requests(b.id) is True
    assert store.open_counts(b.id) == (0, 0)


def test_results_come_in_input_order_in_pages(store: Store) -> None:
    b = make_batch(store, 7)
    claimed = store.claim(b.id, "w", NOW, 30, 7, 5)
    store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in reversed(claimed)])
    page1 = store.results(b.id, -1, 4)
    page2 = store.results(b.id, page1[-1].idx, 4)
    assert [r.idx for r in page1 + page2] == list(range(7))
    assert [r.custom_id for r in page1] == ["c0", "c1", "c2", "c3"]
    assert page1[0].result == ok()


def test_failed_results_are_the_error_lines_in_input_order(store: Store) -> None:
    b = make_batch(store, 6)
    claimed = store.claim(b.id, "w", NOW, 30, 6, 6)
    answers = [ok(), Result(status_code=400, body=b'{"error": {}}'), ok(),
               Result.never_ran("output_invalid", "not json"), Result(status_code=500, body=b"{}"), ok()]
    store.complete(b.id, [Completion(c.idx, c.attempt_id, answers[c.idx]) for c in claimed if c.idx != 2])
    failed = store.failed_results(b.id, -1, 10)
    assert [r.idx for r in failed] == [1, 3, 4], "no 2xx answer; unfinished ones (2) are not failures yet"
    assert failed[1].result.error_code == "output_invalid" and failed[0].result.status_code == 400
    assert [r.idx for r in store.failed_results(b.id, 1, 1)] == [3], "paged after an index"


def test_idempotency_key_returns_the_first_batch(store: Store) -> None:
    b2 = new_batch("batch_" + "d" * 24)
    assert store.insert_batch(b2, "k1").id == b2.id
    b3 = new_batch("batch_" + "e" * 24)
    assert store.insert_batch(b3, "k1").id == b2.id
    assert store.get_batch("p", b3.id) is None
    assert store.find_batch("p", "k1") is not None and store.find_batch("q", "k1") is None
    assert store.insert_batch(new_batch("batch_" + "c" * 24, project="q"), "k1").project == "q"


def test_batches_list_newest_first_with_cursor(store: Store) -> None:
    made = [make_batch(store, 1, f"batch_{i:024x}") for i in range(5)]
    page = store.list_batches("p", after=None, limit=2)
    assert [b.id for b in page.items] == [made[4].id, made[3].id] and page.has_more
    page = store.list_batches("p", after=made[3].id, limit=10)
    assert [b.id for b in page.items] == [made[2].id, made[1].id, made[0].id] and not page.has_more
    assert store.list_batches("other", after=None, limit=10).items == []
    assert store.list_batches("p", after="batch_nope", limit=10).items == []


def test_quota_counts_active_batches_and_queued_requests(store: Store) -> None:
    f = a_file("file-" + "6" * 24, lines=7)
    store.insert_file(f, f.id)

    def new(n: int, project: str = "p") -> Batch:
        return new_batch(f"batch_{n:024x}", project=project, input_file_id=f.id)

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
    assert store.insert_batch(new(6, "q"), None, quota, 7).id == new(6).id, "another project has its own quota"
    # an idempotent replay is answered even at the limit
    store.insert_batch(new(7, "r"), "k", Quota(max_active_batches=1), 1)
    assert store.insert_batch(new(8, "r"), "k", Quota(max_active_batches=1), 1).id == new(7).id


def test_concurrent_inserts_under_one_key_or_one_quota_make_one_batch(store: Store) -> None:
    import threading

    made: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(4)

    def insert(i: int, key: str | None, quota: Quota | None, project: str) -> None:
        barrier.wait()
        try:
            made.append(store.insert_batch(new_batch(f"batch_{i:024x}", project=project), key, quota, 1).id)
        except RateLimited:
            refused.append(f"batch_{i:024x}")

    def race(key: str | None, quota: Quota | None, project: str, first: int) -> None:
        made.clear()
        refused.clear()
        threads = [threading.Thread(target=insert, args=(first + i, key, quota, project)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    race("same-key", None, "p", 0)
    assert len(made) == 4 and len(set(made)) == 1, "every caller gets the one batch made under the key"
    race(None, Quota(max_active_batches=1), "q", 10)
    assert len(made) == 1 and len(refused) == 3, "the quota holds against concurrent inserts"
