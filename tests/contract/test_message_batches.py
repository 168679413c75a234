"""MessageBatchStore: a row beside a batch, counted once it has ended, deleted with its files."""

from __future__ import annotations

import pytest
from contract_helpers import NOW, a_file, new_batch, ok

from freight.domain.batches import Batch, BatchStatus
from freight.domain.errors import RateLimited
from freight.domain.message_batches import EndedCounts
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED, Result
from freight.ports import Completion, NewRequest, Quota, Store


def message_batch(store: Store, n: int, project: str = "p", quota: Quota | None = None) -> Batch:
    b = new_batch(f"batch_{n:024x}", project=project, input_file_id=f"file-{n:024x}", endpoint="/v1/messages")
    store.insert_message_batch(a_file(b.input_file_id, project=project, lines=4), f"blob-{n}", b, 4, quota)
    return b


def test_a_message_batch_is_a_batch_with_its_request_count(store: Store) -> None:
    b = message_batch(store, 1)
    assert store.is_message_batch(b.id) and not store.is_message_batch("batch_nope")
    got = store.get_message_batch("p", b.id)
    assert got is not None and got.batch == b and got.requests == 4 and got.ended is None
    assert store.get_message_batch("q", b.id) is None
    assert store.get_file("p", b.input_file_id) is not None and store.file_blob_key(b.input_file_id) == "blob-1"
    assert store.get_batch("p", b.id) == b


def test_message_batches_list_newest_first_both_ways(store: Store) -> None:
    made = [message_batch(store, i) for i in range(1, 6)]
    message_batch(store, 9, project="q")
    page = store.list_message_batches("p", after=None, before=None, limit=2)
    assert [m.batch.id for m in page.items] == [made[4].id, made[3].id] and page.has_more
    page = store.list_message_batches("p", after=made[3].id, before=None, limit=10)
    assert [m.batch.id for m in page.items] == [made[2].id, made[1].id, made[0].id] and not page.has_more
    page = store.list_message_batches("p", after=None, before=made[0].id, limit=2)
    assert [m.batch.id for m in page.items] == [made[2].id, made[1].id] and page.has_more
    assert store.list_message_batches("p", after="batch_nope", before=None, limit=2).items == []


def test_settling_counts_each_result_by_kind_once(store: Store) -> None:
    b = message_batch(store, 1)
    store.insert_requests(b.id, [NewRequest(i, i + 1, f"c{i}", b"{}") for i in range(4)])
    store.start_batch(b.id, 4, "m", int(NOW))
    assert store.settle_message_batch(b.id) is None, "not ended"
    c0, c1 = store.claim(b.id, "w", NOW, 30, 2, 5)
    store.complete(b.id, [Completion(c0.idx, c0.attempt_id, ok()),
                          Completion(c1.idx, c1.attempt_id, Result(status_code=400, body=b"{}"))])
    store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, 1)
    store.close_unstarted(b.id, Result.never_ran(BATCH_CANCELLED, "x"), include_running=True)
    store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 2)
    ended = store.settle_message_batch(b.id)
    assert ended == EndedCounts(succeeded=1, errored=1, canceled=2, expired=0)
    got = store.get_message_batch("p", b.id)
    assert got is not None and got.ended == ended
    assert store.settle_message_batch(b.id) == ended and store.settle_message_batch("batch_nope") is None


def test_deleting_an_ended_message_batch_takes_its_rows_and_files(store: Store) -> None:
    b = message_batch(store, 1)
    store.insert_finished_requests(b.id, [(NewRequest(0, 1, "c", b"{}"), Result.never_ran(BATCH_EXPIRED, "x"))])
    assert not store.delete_message_batch("p", b.id), "not ended"
    store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.EXPIRED, 1)
    assert store.settle_message_batch(b.id) == EndedCounts(expired=1)
    assert not store.delete_message_batch("q", b.id)
    assert store.delete_message_batch("p", b.id)
    assert store.get_message_batch("p", b.id) is None and store.get_batch("p", b.id) is None
    assert not store.is_message_batch(b.id) and store.results(b.id, -1, 10) == []
    assert store.get_file("p", b.input_file_id) is None and store.purgeable_files(NOW) == [(b.input_file_id, "blob-1")]
    assert not store.delete_message_batch("p", b.id)


def test_a_deleted_batch_still_marks_its_place_for_paging(store: Store) -> None:
    """Deleting each page's batches while paging (what the SDK's auto-pagination with a delete in the loop does)
    reaches every batch: the cursor is a batch deleted meanwhile."""
    made = [message_batch(store, i) for i in range(1, 8)]
    for b in made:
        store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.EXPIRED, 1)
    seen: list[str] = []
    after: str | None = None
    while True:
        page = store.list_message_batches("p", after=after, before=None, limit=3)
        for m in page.items:
            seen.append(m.batch.id)
            assert store.delete_message_batch("p", m.batch.id)
        if not page.has_more:
            break
        after = page.items[-1].batch.id
    assert seen == [b.id for b in reversed(made)]
    assert store.list_message_batches("p", after=None, before=None, limit=10).items == []
    page = store.list_message_batches("p", after=None, before=made[0].id, limit=10)
    assert page.items == [] and not page.has_more
    assert store.list_message_batches("q", after=made[3].id, before=None, limit=10).items == [], "another project's"


def test_the_quota_is_checked_with_the_insert(store: Store) -> None:
    message_batch(store, 1, quota=Quota(max_active_batches=1))
    with pytest.raises(RateLimited):
        message_batch(store, 2, quota=Quota(max_active_batches=1))
    assert not store.is_message_batch(f"batch_{2:024x}") and store.get_file("p", f"file-{2:024x}") is None
