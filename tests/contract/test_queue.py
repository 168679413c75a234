"""RequestQueue: claims under leases, attempt-id fencing, retries, closing, releasing."""

from __future__ import annotations

import threading

from contract_helpers import NOW, make_batch, ok

from freight.domain.batches import BatchStatus
from freight.domain.requests import WORKER_LOST, Result
from freight.ports import Completion, Retry, Store


def test_claim_leases_each_request_once(store: Store) -> None:
    b = make_batch(store, 10)
    first = store.claim(b.id, "w1", NOW, 30, 4, 5)
    second = store.claim(b.id, "w2", NOW, 30, 100, 5)
    assert [c.idx for c in first] == [0, 1, 2, 3]
    assert [c.idx for c in second] == list(range(4, 10))
    assert store.claim(b.id, "w3", NOW, 30, 100, 5) == []
    assert all(c.attempts == 1 and c.batch_id == b.id for c in first + second)
    assert len({c.attempt_id for c in first + second}) == 10
    assert first[0].custom_id == "c0" and first[0].body == b'{"model":"m"}'
    assert store.open_counts(b.id) == (0, 10)


def test_only_the_attempt_holding_the_claim_can_store_a_result(store: Store) -> None:
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


def test_a_failed_result_counts_as_failed(store: Store) -> None:
    b = make_batch(store, 2)
    a, c = store.claim(b.id, "w", NOW, 30, 2, 5)
    bad = Result(status_code=400, body=b'{"error":{}}', input_tokens=1)
    assert store.complete(b.id, [Completion(a.idx, a.attempt_id, bad), Completion(c.idx, c.attempt_id, ok())]) == 2
    got = store.get_batch("p", b.id)
    assert got is not None and (got.request_counts.completed, got.request_counts.failed) == (1, 1)
    assert got.usage.input_tokens == 4


def test_live_leases_are_not_reclaimed(store: Store) -> None:
    b = make_batch(store, 1)
    store.claim(b.id, "w1", NOW, 30, 1, 5)
    assert store.claim(b.id, "w2", NOW + 29, 30, 1, 5) == []


def test_renewed_lease_is_kept(store: Store) -> None:
    b = make_batch(store, 2)
    c1, c2 = store.claim(b.id, "w1", NOW, 30, 2, 5)
    assert store.renew(b.id, [(c1.idx, c1.attempt_id), (c2.idx, c2.attempt_id)], NOW + 100) == 2
    assert store.claim(b.id, "w2", NOW + 50, 30, 1, 5) == []
    assert store.renew(b.id, [(c1.idx, "att_not_a_claim"), (7, c2.attempt_id)], NOW + 100) == 0
    assert store.renew(b.id, [], NOW + 100) == 0


def test_a_stale_attempt_cannot_renew_the_lease_that_replaced_it(store: Store) -> None:
    b = make_batch(store, 1)
    (old,) = store.claim(b.id, "w1", NOW, 30, 1, 5)
    (new,) = store.claim(b.id, "w2", NOW + 31, 30, 1, 5)
    assert store.renew(b.id, [(old.idx, old.attempt_id)], NOW + 1000) == 0
    (again,) = store.claim(b.id, "w3", NOW + 62, 30, 1, 5)  # the new lease ran out: not extended by the old
    assert again.attempts == 3 and store.complete(b.id, [Completion(new.idx, new.attempt_id, ok())]) == 0


def test_lease_lost_on_the_last_attempt_closes_the_request(store: Store) -> None:
    b = make_batch(store, 1)
    for t in range(2):
        store.claim(b.id, "w", NOW + 100 * t, 30, 1, 2)
    assert store.claim(b.id, "w", NOW + 300, 30, 1, 2) == []
    (stored,) = store.results(b.id, -1, 10)
    assert stored.result.error_code == WORKER_LOST and stored.result.status_code is None
    assert "2 of 2" in (stored.result.error_message or "")
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.request_counts.failed == 1
    assert store.open_counts(b.id) == (0, 0)


def test_retry_later_respects_not_before(store: Store) -> None:
    b = make_batch(store, 1)
    (c,) = store.claim(b.id, "w", NOW, 30, 1, 5)
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW + 10, "HTTP 503")]) == 1
    assert store.open_counts(b.id) == (1, 0)
    assert store.claim(b.id, "w", NOW + 5, 30, 1, 5) == []
    (again,) = store.claim(b.id, "w", NOW + 10, 30, 1, 5)
    assert again.attempts == 2
    # the old attempt can no longer schedule a retry either
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW + 99, "late")]) == 0


def test_a_refunded_retry_does_not_count_its_attempt(store: Store) -> None:
    b = make_batch(store, 1)
    (c,) = store.claim(b.id, "w", NOW, 30, 1, 5)
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW, "withdrawn", refund=True)]) == 1
    (again,) = store.claim(b.id, "w", NOW, 30, 1, 5)
    assert again.attempts == c.attempts == 1, "withdrawn before it was sent: the attempt is given back"
    assert store.retry_later(b.id, [Retry(c.idx, c.attempt_id, NOW, "stale", refund=True)]) == 0, "fenced"


def test_claim_only_from_in_progress_batches(store: Store) -> None:
    b = make_batch(store, 3)
    assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, int(NOW)) is not None
    assert store.claim(b.id, "w", NOW, 30, 10, 5) == []
    assert store.claim_runnable(["m"], "w", NOW, 30, 10, 5) == []


def test_close_unstarted_counts_and_spares_running(store: Store) -> None:
    b = make_batch(store, 5)
    running = store.claim(b.id, "w", NOW, 30, 2, 5)
    closed = store.close_unstarted(b.id, Result.never_ran("batch_cancelled", "x"), include_running=False)
    assert closed == 3 and store.open_counts(b.id) == (0, 2)
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in running]) == 2
    batch = store.get_batch("p", b.id)
    assert batch is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)


def test_close_running_fences_out_late_results(store: Store) -> None:
    b = make_batch(store, 2)
    running = store.claim(b.id, "w", NOW, 30, 2, 5)
    assert store.close_unstarted(b.id, Result.never_ran("batch_expired", "x"), include_running=True) == 2
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in running]) == 0
    assert [r.result.error_code for r in store.results(b.id, -1, 10)] == ["batch_expired"] * 2


def test_release_leases_returns_running_to_pending(store: Store) -> None:
    b = make_batch(store, 3)
    store.claim(b.id, "w", NOW, 1000, 3, 5)
    assert store.release_leases() == 3
    assert len(store.claim(b.id, "w2", NOW, 30, 10, 5)) == 3


def test_release_leases_of_one_owner_spares_the_others(store: Store) -> None:
    b = make_batch(store, 4)
    mine = store.claim(b.id, "me", NOW, 1000, 2, 5)
    theirs = store.claim(b.id, "them", NOW, 1000, 2, 5)
    assert store.release_leases("me") == 2
    again = store.claim(b.id, "me-again", NOW, 30, 10, 5)
    assert sorted(c.idx for c in again) == sorted(c.idx for c in mine)
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in theirs]) == 2
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in mine]) == 0, "fenced out"


def test_claim_runnable_takes_work_across_batches_of_the_models_in_one_call(store: Store) -> None:
    a = make_batch(store, 3, "batch_" + "1" * 24, model="m")
    b = make_batch(store, 2, "batch_" + "2" * 24, project="q", model="m")
    make_batch(store, 4, "batch_" + "3" * 24, model="other")
    got = store.claim_runnable(["m"], "w", NOW, 30, 4, 5)
    assert [(c.batch_id, c.idx) for c in got] == [(a.id, 0), (a.id, 1), (a.id, 2), (b.id, 0)], "oldest batch first"
    rest = store.claim_runnable(["m", "nope"], "w2", NOW, 30, 10, 5)
    assert [(c.batch_id, c.idx) for c in rest] == [(b.id, 1)]
    assert store.claim_runnable([], "w", NOW, 30, 10, 5) == []
    assert len(store.claim_runnable(["other"], "w", NOW, 30, 10, 5)) == 4
    # expired leases are taken over, and lost on their last attempt, as by claim
    again = store.claim_runnable(["m"], "w3", NOW + 31, 30, 10, 1)
    assert again == [] and store.open_counts(a.id) == (0, 0)
    assert [r.result.error_code for r in store.results(a.id, -1, 10)] == [WORKER_LOST] * 3
    got_a = store.get_batch("p", a.id)
    assert got_a is not None and got_a.request_counts.failed == 3


def test_claim_runnable_in_a_given_batch_order_fills_the_chunk_from_the_next_batch(store: Store) -> None:
    # The scheduling policy's order (engine/turns.py), in one query: batch b first, then a; c is not named.
    a = make_batch(store, 5, "batch_" + "1" * 24, model="m")
    b = make_batch(store, 3, "batch_" + "2" * 24, project="q", model="m")
    c = make_batch(store, 4, "batch_" + "3" * 24, model="m")
    early = store.claim(b.id, "w0", NOW, 30, 2, 5)  # b's 0 and 1, whose leases run out below
    order = [b.id, "batch_" + "9" * 24, a.id]  # a batch that is not there is passed over
    got = store.claim_runnable(["m"], "w1", NOW + 31, 30, 6, 5, order)
    assert [(r.batch_id, r.idx) for r in got] == [(b.id, 2), (b.id, 0), (b.id, 1), (a.id, 0), (a.id, 1), (a.id, 2)]
    assert [r.attempts for r in got[:3]] == [1, 2, 2] and {r.attempt_id for r in got}.isdisjoint(
        r.attempt_id for r in early)
    rest = store.claim_runnable(["m"], "w1", NOW + 31, 30, 10, 5, [a.id, b.id])
    assert [(r.batch_id, r.idx) for r in rest] == [(a.id, 3), (a.id, 4)]
    assert store.open_counts(a.id) == (0, 5) and store.open_counts(c.id) == (4, 0)
    assert store.claim_runnable(["other"], "w", NOW + 31, 30, 10, 5, [c.id]) == [], "the model filter holds"
    assert store.claim_runnable(["m"], "w", NOW + 31, 30, 10, 5, []) == []
    assert [r.idx for r in store.claim_runnable(["m"], "w", NOW + 31, 30, 2, 5, [c.id, a.id])] == [0, 1]


def test_concurrent_claimers_never_get_the_same_request(store: Store) -> None:
    b = make_batch(store, 200)
    taken: list[list[int]] = [[] for _ in range(6)]

    def claimer(i: int) -> None:
        while got := (store.claim(b.id, f"w{i}", NOW, 30, 7, 5) if i % 3 == 0 else
                      store.claim_runnable(["m"], f"w{i}", NOW, 30, 7, 5) if i % 3 == 1 else
                      store.claim_runnable(["m"], f"w{i}", NOW, 30, 7, 5, [b.id])):
            taken[i].extend(c.idx for c in got)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [idx for t in taken for idx in t]
    assert sorted(every) == list(range(200))


def test_a_claim_takes_pending_requests_before_expired_leases_each_in_input_order(store: Store) -> None:
    # The order of the open-requests index (state, idx): a claim reads only what it takes.
    b = make_batch(store, 6)
    early = store.claim(b.id, "w1", NOW, 30, 2, 5)  # 0 and 1, whose leases run out below
    got = store.claim(b.id, "w2", NOW + 31, 30, 3, 5)
    assert [c.idx for c in got] == [2, 3, 4]
    rest = store.claim(b.id, "w2", NOW + 31, 30, 10, 5)
    assert [c.idx for c in rest] == [5, 0, 1] and [c.attempts for c in rest] == [1, 2, 2]
    assert {c.attempt_id for c in rest}.isdisjoint(c.attempt_id for c in early)


def test_a_completion_with_some_fenced_results_stores_the_others(store: Store) -> None:
    # The whole chunk in one statement first; one stale attempt among them sends it row by row.
    b = make_batch(store, 3)
    claimed = store.claim(b.id, "w1", NOW, 30, 3, 5)
    store.renew(b.id, [(claimed[0].idx, claimed[0].attempt_id), (claimed[2].idx, claimed[2].attempt_id)], NOW + 60)
    (again,) = store.claim(b.id, "w2", NOW + 31, 30, 3, 5)  # only 1's lease ran out
    assert again.idx == 1 and again.attempt_id != claimed[1].attempt_id
    assert store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in claimed]) == 2
    assert store.open_counts(b.id) == (0, 1)
    batch = store.get_batch("p", b.id)
    assert batch is not None and batch.request_counts.completed == 2
    assert store.complete(b.id, [Completion(again.idx, again.attempt_id, ok())]) == 1


def test_a_request_put_back_behind_the_claims_is_still_claimed(store: Store) -> None:
    """Claims of a batch start after the last request this process claimed from it (PostgreSQL's
    ClaimHints); a request put back for a retry behind that point is found by a later claim."""
    b = make_batch(store, 10)
    first = store.claim_runnable(["m"], "w", NOW, 30, 4, 5, [b.id])
    assert [c.idx for c in first] == [0, 1, 2, 3]
    store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in first if c.idx != 1])
    (one,) = [c for c in first if c.idx == 1]
    assert store.retry_later(b.id, [Retry(one.idx, one.attempt_id, NOW, "HTTP 503")]) == 1
    seen: list[int] = []
    while claimed := store.claim_runnable(["m"], "w", NOW, 30, 3, 5, [b.id]):
        seen += [c.idx for c in claimed]
        store.complete(b.id, [Completion(c.idx, c.attempt_id, ok()) for c in claimed])
    assert sorted(seen) == [1, 4, 5, 6, 7, 8, 9], "each open request claimed once"
    assert store.open_counts(b.id) == (0, 0)
