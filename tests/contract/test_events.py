"""EventStore (the batch events outbox) and WebhookStore: endpoints and durable deliveries."""

from __future__ import annotations

from contract_helpers import NOW, make_batch, new_batch

from freight.domain.batches import BatchError, BatchStatus
from freight.domain.webhooks import WebhookEndpoint
from freight.ports import Store


def endpoint(eid: str = "we_" + "1" * 24, project: str = "p", types: tuple[str, ...] = ("batch.completed",),
             at: int = int(NOW)) -> WebhookEndpoint:
    return WebhookEndpoint(eid, project, "n", "https://example.com/hook", types, "whsec_AAAA", at, at)


def statuses(store: Store, project: str | None = None) -> list[tuple[str | None, str]]:
    return [(e.old_status, e.new_status) for e in store.events_after(0, 100, project)]


def test_every_status_change_is_an_event_in_order(store: Store) -> None:
    assert store.last_event_seq() == 0
    b = make_batch(store, 1)  # insert + start
    assert store.set_status(b.id, [BatchStatus.VALIDATING], BatchStatus.FAILED, 9) is None, "no change: no event"
    assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, 20) is not None
    assert store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 21) is not None
    assert statuses(store) == [(None, "validating"), ("validating", "in_progress"), ("in_progress", "cancelling"),
                               ("cancelling", "cancelled")]
    events = store.events_after(0, 100)
    assert [e.seq for e in events] == sorted(e.seq for e in events) and len({e.id for e in events}) == 4
    assert all(e.batch_id == b.id and e.project == "p" and e.id.startswith("evt_") for e in events)
    assert [e.at for e in events] == [int(NOW), int(NOW), 20, 21]
    assert store.last_event_seq() == events[-1].seq
    assert store.events_after(events[1].seq, 1) == [events[2]], "after a seq, limited"
    assert events[-1].webhook_type == "batch.cancelled" and events[0].webhook_type is None


def test_failed_validation_and_finish_are_events_and_projects_are_apart(store: Store) -> None:
    a = new_batch("batch_" + "a" * 24, "p")
    store.insert_batch(a, None)
    assert store.fail_validation(a.id, [BatchError("bad", "x")], 5)
    b = make_batch(store, 0, "batch_" + "b" * 24, "q")
    assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 6) is not None
    assert store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, 7, None, None)
    assert statuses(store, "p") == [(None, "validating"), ("validating", "failed")]
    assert statuses(store, "q")[-1] == ("finalizing", "completed")


def test_an_event_is_written_with_its_change_or_not_at_all(store: Store) -> None:
    """The outbox row shares the change's transaction: a change that fails leaves neither."""
    b = make_batch(store, 1)
    before = store.last_event_seq()
    # A request without its result: finish_batch refuses, and no event is written.
    assert not store.finish_batch(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.COMPLETED, 7, None, None)
    assert store.last_event_seq() == before
    # A compare-and-set that loses (the status moved meanwhile) writes no event either.
    assert store.set_status(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, 8) is None
    assert store.last_event_seq() == before


def test_webhook_endpoints_crud_and_pages(store: Store) -> None:
    ids = [f"we_{i:024d}" for i in range(3)]
    for i, eid in enumerate(ids):
        store.insert_webhook_endpoint(endpoint(eid, at=int(NOW) + i))
    store.insert_webhook_endpoint(endpoint("we_" + "9" * 24, project="q"))
    assert store.get_webhook_endpoint("p", ids[0]) == endpoint(ids[0])
    assert store.get_webhook_endpoint("q", ids[0]) is None, "another project's is not found"
    page = store.list_webhook_endpoints("p", after=None, limit=2)
    assert [e.id for e in page.items] == [ids[2], ids[1]] and page.has_more
    page = store.list_webhook_endpoints("p", after=ids[1], limit=2)
    assert [e.id for e in page.items] == [ids[0]] and not page.has_more
    changed = WebhookEndpoint(ids[0], "p", "m", "https://example.org/", ("batch.failed",), "whsec_BBBB", int(NOW),
                              int(NOW) + 9, "whsec_AAAA", int(NOW) + 99)
    assert store.update_webhook_endpoint(changed)
    assert store.get_webhook_endpoint("p", ids[0]) == changed
    assert store.delete_webhook_endpoint("p", ids[0]) and not store.delete_webhook_endpoint("p", ids[0])
    assert store.get_webhook_endpoint("p", ids[0]) is None and not store.update_webhook_endpoint(changed)
    assert not store.delete_webhook_endpoint("q", ids[1])


def test_deliveries_are_planned_once_from_the_outbox_and_retried_until_done(store: Store) -> None:
    store.insert_webhook_endpoint(endpoint("we_" + "1" * 24, types=("batch.completed", "batch.cancelled")))
    store.insert_webhook_endpoint(endpoint("we_" + "2" * 24, types=("batch.failed",)))
    store.insert_webhook_endpoint(endpoint("we_" + "3" * 24, project="q", types=("batch.cancelled",)))
    b = make_batch(store, 1)
    store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, 20)
    store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 21)
    assert store.plan_deliveries(NOW, 2) == 2 and store.plan_deliveries(NOW, 100) == 2
    assert store.plan_deliveries(NOW, 100) == 0, "the cursor moved: nothing is planned twice"
    due = store.due_deliveries(NOW, 10)
    assert [(d.endpoint.id, d.event.webhook_type, d.attempts) for d in due] == [
        ("we_" + "1" * 24, "batch.cancelled", 0)], "only the subscribed endpoint of the batch's project"
    d = due[0]
    store.delivery_attempted(d.seq, 500, "HTTP 500", NOW + 10, NOW)
    assert store.due_deliveries(NOW + 9, 10) == []
    again = store.due_deliveries(NOW + 10, 10)
    assert [(x.seq, x.event.id, x.attempts) for x in again] == [(d.seq, d.event.id, 1)], "the same event id"
    store.delivery_attempted(d.seq, None, "connection refused", NOW + 20, NOW + 10)
    store.delivery_attempted(d.seq, 204, None, None, NOW + 20)
    assert store.due_deliveries(NOW + 10**6, 10) == []
    assert store.delivery_states(d.endpoint.id) == [(d.event.id, "delivered", 3)]


def test_a_delivery_is_given_up_and_a_deleted_endpoint_drops_its_pending_ones(store: Store) -> None:
    store.insert_webhook_endpoint(endpoint("we_" + "1" * 24, types=("batch.completed",)))
    store.insert_webhook_endpoint(endpoint("we_" + "2" * 24, types=("batch.completed",)))
    b = make_batch(store, 0)
    store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 6)
    assert store.finish_batch(b.id, [BatchStatus.FINALIZING], BatchStatus.COMPLETED, 7, None, None)
    store.plan_deliveries(NOW, 100)
    one, two = store.due_deliveries(NOW, 10)
    store.delivery_attempted(one.seq, 410, "HTTP 410", None, NOW)
    assert store.delivery_states(one.endpoint.id) == [(one.event.id, "failed", 1)]
    assert store.delete_webhook_endpoint("p", two.endpoint.id)
    assert store.due_deliveries(NOW, 10) == [] and store.delivery_states(two.endpoint.id) == []


def test_stats_are_totals_over_batch_rows_and_open_requests(store: Store) -> None:
    from contract_helpers import ok

    from freight.ports import Completion

    a = make_batch(store, 3, "batch_" + "a" * 24, "p", model="m1")
    b = make_batch(store, 2, "batch_" + "b" * 24, "q", model="m1")
    assert len(store.claim(b.id, "w", NOW, 30, 1, 5)) == 1
    claimed = store.claim(a.id, "w", NOW, 30, 1, 5)
    assert store.complete(a.id, [Completion(c.idx, c.attempt_id, ok()) for c in claimed]) == 1
    c = new_batch("batch_" + "c" * 24, "p")
    store.insert_batch(c, None)
    assert store.fail_validation(c.id, [BatchError("bad", "x")], int(NOW) + 7)
    s = store.stats(by_project=False)
    assert s.batches == {("", "in_progress"): 2, ("", "failed"): 1}
    assert s.finished[("", "m1", "/v1/embeddings", "completed")] == 1
    assert s.tokens[("", "m1", "input")] == 3 and s.tokens[("", "m1", "output")] == 2
    assert s.open_requests == {("m1", "queued"): 3, ("m1", "running"): 1}
    assert s.batch_durations == {("failed", 7): 1}
    by = store.stats(by_project=True)
    assert by.batches == {("p", "in_progress"): 1, ("q", "in_progress"): 1, ("p", "failed"): 1}
