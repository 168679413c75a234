"""Pause and resume in the engine (SQLite, the scripted backend with two slots, a fixed clock): a pause
withdraws the requests waiting inside the backend back to pending and starts nothing new; the two
running finish; after resume the batch completes with every request answered once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_withdrawal import SLOTS, N, World

from freight.domain.batches import BatchStatus
from freight.domain.errors import InvalidInput, NotFound
from freight.services.scheduling import BatchControl


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


def test_pause_withdraws_waiting_requests_and_starts_nothing_until_resumed(world: World) -> None:
    batch = world.submit()
    control = BatchControl(world.store, world.clock, world.engine.wake)
    seen: dict[str, object] = {}

    async def pause_then_resume() -> None:
        await world.two_running()
        paused = await asyncio.to_thread(control.pause, "p", batch.id)
        assert paused.paused_at == int(world.clock.now()) and paused.status is BatchStatus.IN_PROGRESS
        # The two running finish; the ten waiting in the backend come back to pending and nothing starts.
        for _ in range(400):
            pending, running = await asyncio.to_thread(world.store.open_counts, batch.id)
            if running == 0 and pending == N - SLOTS:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # dozens of dispatcher turns: none may claim from the paused batch
        seen["open"] = await asyncio.to_thread(world.store.open_counts, batch.id)
        seen["executed"], seen["withdrawn"] = world.backend.executed, world.backend.withdrawn
        seen["attempts"] = await asyncio.to_thread(pending_attempts, world, batch.id)
        resumed = await asyncio.to_thread(control.resume, "p", batch.id)
        assert resumed.paused_at is None

    done = world.run(batch.id, pause_then_resume)
    assert seen["open"] == (N - SLOTS, 0)
    assert seen["executed"] == SLOTS and seen["withdrawn"] == N - SLOTS
    assert seen["attempts"] == [0] * (N - SLOTS), "withdrawn before they were sent: no attempt used"
    assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == N
    assert world.backend.executed == N, "each request ran once: the withdrawn ones after the resume"
    out = world.lines(done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(N))


def pending_attempts(world: World, batch_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(world.store_path)) as db:
        return [n for (n,) in db.execute("SELECT attempts FROM requests WHERE batch_id = ? AND state = 0 ORDER BY idx",
                                         (batch_id,))]


def test_controls_are_project_isolated_and_check_priority(world: World) -> None:
    batch = world.submit()
    control = BatchControl(world.store, world.clock)
    with pytest.raises(NotFound):
        control.pause("other", batch.id)
    with pytest.raises(NotFound):
        control.set_priority("other", batch.id, {"priority": 1})
    with pytest.raises(NotFound):
        control.resume("p", "batch_nope")
    for bad, code in (({"priority": "high"}, "invalid_type"), ({"priority": 1.5}, "invalid_type"),
                      ({"priority": 10_000}, "invalid_value"), ({"priority": True}, "invalid_type"),
                      ({}, "missing_required_parameter"), ([], "invalid_request"),
                      ({"priority": 1, "prority": 2}, "unknown_parameter")):
        with pytest.raises(InvalidInput) as refused:
            control.set_priority("p", batch.id, bad)
        assert refused.value.code == code, (bad, refused.value.code)
    assert control.set_priority("p", batch.id, {"priority": -7}).priority == -7
