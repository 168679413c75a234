"""SchedulingStore: priority and pause of active batches in their project, and model time used per project."""

from __future__ import annotations

from contract_helpers import make_batch, new_batch

from freight.domain.batches import BatchStatus
from freight.ports import Store


def test_priority_is_stored_on_insert_and_changed_in_its_project_only(store: Store) -> None:
    b = new_batch()
    b.priority = 7
    store.insert_batch(b, None)
    got = store.get_batch("p", b.id)
    assert got is not None and got.priority == 7 and got.paused_at is None
    changed = store.set_priority("p", b.id, -3)
    assert changed is not None and changed.priority == -3
    assert store.set_priority("q", b.id, 5) is None, "another project's batch is not found"
    got = store.get_batch("p", b.id)
    assert got is not None and got.priority == -3


def test_pause_keeps_its_first_time_and_resume_clears_it(store: Store) -> None:
    b = make_batch(store, 2)
    paused = store.pause_batch("p", b.id, 100)
    assert paused is not None and paused.paused_at == 100
    again = store.pause_batch("p", b.id, 200)
    assert again is not None and again.paused_at == 100
    assert [x.paused_at for x in store.active_batches()] == [100]
    assert store.pause_batch("q", b.id, 300) is None and store.resume_batch("q", b.id) is None
    resumed = store.resume_batch("p", b.id)
    assert resumed is not None and resumed.paused_at is None


def test_a_finished_batch_is_not_paused_or_reprioritised(store: Store) -> None:
    b = make_batch(store, 1)
    assert store.set_status(b.id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, 9) is not None
    assert store.set_status(b.id, [BatchStatus.CANCELLING], BatchStatus.CANCELLED, 10) is not None
    got = store.pause_batch("p", b.id, 11)
    assert got is not None and got.paused_at is None
    got = store.set_priority("p", b.id, 4)
    assert got is not None and got.priority == 0


def test_usage_adds_up_per_project_over_the_buckets_asked_for(store: Store) -> None:
    store.add_usage("a", 60, 1.5, 0)
    store.add_usage("a", 60, 2.0, 0)
    store.add_usage("a", 120, 1.0, 0)
    store.add_usage("b", 120, 4.0, 0)
    assert store.usage_since(60) == {"a": 4.5, "b": 4.0}
    assert store.usage_since(120) == {"a": 1.0, "b": 4.0}
    store.add_usage("b", 180, 1.0, 120)  # buckets before 120 are forgotten
    assert store.usage_since(0) == {"a": 1.0, "b": 5.0}
