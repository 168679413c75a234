"""The StepLeases contract (compare-and-set named leases), and the engine's use of it: batch steps in
one process at a time, the lease moving on when its holder stops renewing. SQLite here; every
implementation of the port runs the same contract (add it to ``leases``' params)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from freight.engine.step_lease import BATCH_STEPS, StepHolder
from freight.ports import StepLeases
from freight.store.step_leases import SqliteStepLeases


@pytest.fixture(params=["sqlite"])
def leases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StepLeases]:
    store = SqliteStepLeases(tmp_path / "freight.db")
    yield store
    store.close()


def test_one_holder_at_a_time(leases: StepLeases) -> None:
    assert leases.holder("x", 100) is None
    assert leases.acquire("x", "a", 100, 110)
    assert not leases.acquire("x", "b", 105, 115), "held by a until 110"
    assert leases.holder("x", 105) == "a"
    assert leases.acquire("x", "a", 109, 120), "its holder renews it"
    assert not leases.acquire("x", "b", 119, 130)


def test_an_expired_lease_moves_to_another_holder(leases: StepLeases) -> None:
    assert leases.acquire("x", "a", 100, 110)
    assert leases.holder("x", 111) is None
    assert leases.acquire("x", "b", 111, 121)
    assert not leases.acquire("x", "a", 112, 122), "the old holder lost it"
    assert leases.holder("x", 112) == "b"


def test_release_frees_only_the_holders_lease(leases: StepLeases) -> None:
    assert leases.acquire("x", "a", 100, 110)
    leases.release("x", "b")
    assert leases.holder("x", 101) == "a"
    leases.release("x", "a")
    assert leases.holder("x", 101) is None
    assert leases.acquire("x", "b", 101, 111)


def test_names_are_independent(leases: StepLeases) -> None:
    assert leases.acquire("x", "a", 100, 110)
    assert leases.acquire("y", "b", 100, 110)
    assert leases.holder("x", 100) == "a" and leases.holder("y", 100) == "b"


def test_two_connections_see_one_lease(tmp_path: Path) -> None:
    one, two = SqliteStepLeases(tmp_path / "db"), SqliteStepLeases(tmp_path / "db")
    try:
        assert one.acquire("x", "a", 100, 110)
        assert not two.acquire("x", "b", 100, 110)
        assert two.holder("x", 100) == "a"
    finally:
        one.close()
        two.close()


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def test_step_holder_renews_lazily_and_hands_over_when_stopped(tmp_path: Path) -> None:
    leases = SqliteStepLeases(tmp_path / "db")
    clock = _Clock()
    a, b = StepHolder(leases, "a", clock, 15.0), StepHolder(leases, "b", clock, 15.0)

    async def scenario() -> None:
        assert await a.held()
        assert not await b.held()
        clock.t += 14  # a did not renew (it died): b waits out the lease
        assert not await b.held()
        clock.t += 2
        assert await b.held()
        assert not await a.held(), "a's lease moved on"
        await b.release()
        assert await a.held(), "a stopping holder hands the lease over at once"

    asyncio.run(scenario())
    assert leases.holder(BATCH_STEPS, clock.t) == "a"
    leases.close()


def test_without_leases_an_engine_always_runs_the_steps() -> None:
    assert asyncio.run(StepHolder(None, "a", _Clock(), 15.0).held())
