"""StepLeases: named leases, one holder at a time, compare-and-set (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from freight.ports import Store


def test_one_holder_at_a_time(store: Store) -> None:
    assert store.lease_holder("x", 100) is None
    assert store.acquire_lease("x", "a", 100, 110)
    assert not store.acquire_lease("x", "b", 105, 115), "held by a until 110"
    assert store.lease_holder("x", 105) == "a"
    assert store.acquire_lease("x", "a", 109, 120), "its holder renews it"
    assert not store.acquire_lease("x", "b", 119, 130)


def test_an_expired_lease_moves_to_another_holder(store: Store) -> None:
    assert store.acquire_lease("x", "a", 100, 110)
    assert store.lease_holder("x", 111) is None
    assert store.acquire_lease("x", "b", 111, 121)
    assert not store.acquire_lease("x", "a", 112, 122), "the old holder lost it"
    assert store.lease_holder("x", 112) == "b"


def test_release_frees_only_the_holders_lease(store: Store) -> None:
    assert store.acquire_lease("x", "a", 100, 110)
    store.release_lease("x", "b")
    assert store.lease_holder("x", 101) == "a"
    store.release_lease("x", "a")
    assert store.lease_holder("x", 101) is None
    assert store.acquire_lease("x", "b", 101, 111)


def test_names_are_independent(store: Store) -> None:
    assert store.acquire_lease("x", "a", 100, 110)
    assert store.acquire_lease("y", "b", 100, 110)
    assert store.lease_holder("x", 100) == "a" and store.lease_holder("y", 100) == "b"


def test_two_sqlite_stores_on_one_file_see_one_lease(tmp_path: Path) -> None:
    from freight.store.sqlite import SqliteStore

    one, two = SqliteStore(tmp_path / "db"), SqliteStore(tmp_path / "db")
    try:
        assert one.acquire_lease("x", "a", 100, 110)
        assert not two.acquire_lease("x", "b", 100, 110)
        assert two.lease_holder("x", 100) == "a"
    finally:
        one.close()
        two.close()


def test_step_failures_are_counted_in_a_row_and_cleared(store: Store) -> None:
    assert store.step_failure_counts() == {}
    assert store.count_step_failure("batch_a") == 1
    assert store.count_step_failure("batch_a") == 2
    assert store.count_step_failure("batch_b") == 1
    assert store.step_failure_counts() == {"batch_a": 2, "batch_b": 1}
    store.clear_step_failures("batch_a")
    store.clear_step_failures("batch_none")
    assert store.step_failure_counts() == {"batch_b": 1}
    assert store.count_step_failure("batch_a") == 1, "a success starts the count again"
