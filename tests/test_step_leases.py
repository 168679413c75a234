"""The engine's use of StepLeases (contract: tests/contract/test_leases.py): batch steps in one
process at a time, the lease moving on when its holder stops renewing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from freight.engine.step_lease import BATCH_STEPS, StepHolder
from freight.store.sqlite import SqliteStore


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def test_step_holder_renews_lazily_and_hands_over_when_stopped(tmp_path: Path) -> None:
    leases = SqliteStore(tmp_path / "db")
    clock = _Clock()
    a, b = StepHolder(leases, "a", clock, 15.0), StepHolder(leases, "b", clock, 15.0)

    async def scenario() -> None:
        assert await a.held()
        assert not await b.held()
        leases.release_lease(BATCH_STEPS, "a")
        assert not await b.held(), "a non-holder looks again only a third of a lease later"
        assert leases.acquire_lease(BATCH_STEPS, "a", clock.t, clock.t + 15)
        clock.t += 14  # a did not renew (it died): b waits out the lease
        assert not await b.held()
        clock.t += 2  # expired, but b looked a moment ago: it looks again a third of a lease after that
        assert not await b.held()
        clock.t += 3
        assert await b.held()
        assert not await a.held(), "a's lease moved on"
        await b.release()
        assert leases.lease_holder(BATCH_STEPS, clock.t) is None, "a stopping holder frees the lease at once"
        clock.t += 5
        assert await a.held()

    asyncio.run(scenario())
    assert leases.lease_holder(BATCH_STEPS, clock.t) == "a"
    leases.close()


def test_without_leases_an_engine_always_runs_the_steps() -> None:
    assert asyncio.run(StepHolder(None, "a", _Clock(), 15.0).held())


def test_two_engines_on_one_store_run_the_batch_steps_in_turn(tmp_path: Path) -> None:
    """Engine b never validates or finalizes while a holds the lease, but runs requests; once a stops
    renewing, b takes the steps over after the lease and finishes the batch."""
    import json

    from freight.backends.scripted import ScriptedBackend
    from freight.domain.batches import TERMINAL, BatchStatus
    from freight.domain.clock import FixedClock
    from freight.engine.engine import Engine, EngineSettings
    from freight.services.batches import BatchService
    from freight.services.catalog import ModelCatalog
    from freight.services.files import FileService
    from freight.store.blobs import LocalBlobStore
    store = SqliteStore(tmp_path / "db", synchronous="OFF")
    leases = store
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    settings = EngineSettings(poll_interval_s=0.01, step_lease_s=15)

    def engine(owner: str) -> Engine:
        return Engine(store, blobs, ModelCatalog([ScriptedBackend(chunk_size=4)]), clock, settings,
                      owner=owner, steps=leases)

    a, b = engine("a"), engine("b")
    files, batches = FileService(store, blobs, clock), BatchService(store, clock)
    data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "freight-scripted", "messages": []}}) + "\n" for i in range(10))
    file_id, writer = files.new_upload()
    writer.write(data.encode())
    f = files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
    batch_id = batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                    "completion_window": "24h"}).id

    def status() -> BatchStatus:
        got = store.get_batch("p", batch_id)
        assert got is not None
        return got.status

    async def scenario() -> None:
        assert leases.acquire_lease(BATCH_STEPS, "a", clock.now(), clock.now() + 15)
        for _ in range(5):
            await b.tick()
            await asyncio.sleep(0.01)
        assert status() is BatchStatus.VALIDATING, "b does not hold the steps"
        await asyncio.wait_for(a.run(until=lambda: status() is not BatchStatus.VALIDATING), 10)
        assert status() is BatchStatus.IN_PROGRESS
        # a stopped normally: it handed the lease over; take it again for a, as if a still ran.
        assert leases.acquire_lease(BATCH_STEPS, "a", clock.now(), clock.now() + 15)
        await asyncio.wait_for(b.run(until=lambda: store.open_counts(batch_id) == (0, 0)), 10)
        assert status() is BatchStatus.IN_PROGRESS, "b ran the requests but may not finalize"
        clock.advance(16)  # a died: its lease runs out
        await asyncio.wait_for(b.run(until=lambda: status() in TERMINAL), 10)

    asyncio.run(scenario())
    assert status() is BatchStatus.COMPLETED
    store.close()
