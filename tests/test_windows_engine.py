"""Off-peak windows through the engine (issue 13's simulation): a fixed clock, the scripted backend taking
60 s of that clock per request, and batches created through the batch service.

- an off-peak batch waits for its window, and one whose deadline cannot wait starts at once;
- ``not_before`` holds a batch until then;
- a model with ``windows`` runs nothing outside them, and stops when its window closes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import Batch
from freight.domain.clock import FixedClock
from freight.domain.errors import InvalidInput
from freight.domain.requests import Failure, Result
from freight.domain.windows import Calendar, hours
from freight.engine.engine import Engine, EngineSettings
from freight.engine.settings import SchedulingSettings
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

MIDNIGHT = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()
H = 3600.0
PER_REQUEST_S = 60.0
MODEL = "freight-scripted"


class Timed(ScriptedBackend):
    """Each request takes a minute of the fixed clock; each chunk is recorded as (batch tag, start time)."""

    def __init__(self, clock: FixedClock) -> None:
        super().__init__(chunk_size=2, max_concurrency=1)
        self.clock = clock
        self.chunks: list[tuple[str, float]] = []

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        self.chunks.append((bodies[0]["messages"][0]["content"].split("-")[0], self.clock.now()))
        self.clock.advance(PER_REQUEST_S * len(bodies))
        return await super().execute(endpoint, bodies)

    def ran(self, tag: str) -> list[float]:
        return [t for x, t in self.chunks if x == tag]


@dataclass
class Sim:
    clock: FixedClock
    backend: Timed
    engine: Engine
    store: SqliteStore
    submit: Callable[..., Batch]

    def set_time(self, at: float) -> None:
        self.clock.advance(at - self.clock.now())

    async def until(self, check: Callable[[], bool], limit_s: float = 60) -> None:
        """Wait (real time) until ``check()``, then until the engine is idle."""
        waited = 0.0
        while not check():
            assert waited < limit_s, "timed out"
            await asyncio.sleep(0.02)
            waited += 0.02
        await self.idle()

    async def idle(self, quiet_s: float = 0.4, limit_s: float = 60) -> None:
        """Wait until the engine has run nothing for ``quiet_s`` (real time)."""
        last, quiet, waited = (-1, -1), 0.0, 0.0
        while quiet < quiet_s and waited < limit_s:
            await asyncio.sleep(0.05)
            waited += 0.05
            seen = (self.backend.executed, len(self.store.active_batches()))
            quiet = quiet + 0.05 if seen == last else 0.0
            last = seen


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[[Calendar], Sim]]:
    stores: list[SqliteStore] = []

    def make(calendar: Calendar) -> Sim:
        store = SqliteStore(tmp_path / f"db{len(stores)}.sqlite", synchronous="OFF")
        stores.append(store)
        blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
        clock = FixedClock(MIDNIGHT + 12 * H)  # noon
        backend = Timed(clock)
        scheduling = SchedulingSettings(calendar=calendar, initial_seconds_per_request=PER_REQUEST_S)
        engine = Engine(store, blobs, ModelCatalog([backend]), clock,
                        EngineSettings(poll_interval_s=0.01, lease_s=10 * 86400, scheduling=scheduling))
        files = FileService(store, blobs, clock)
        batches = BatchService(store, clock, on_change=engine.wake, calendar=calendar)

        def submit(tag: str, n: int, window: str = "24h", **extra: Any) -> Batch:
            rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{tag}-{i}"}]}}
                    for i in range(n)]
            data = "".join(json.dumps(row) + "\n" for row in rows).encode()
            file_id, writer = files.new_upload()
            writer.write(data)
            f = files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
            return batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                        "completion_window": window, **extra})

        return Sim(clock, backend, engine, store, submit)

    yield make
    for s in stores:
        s.close()


async def running(sim: Sim, phases: Callable[[], Any]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sim.engine.run(stop))
    try:
        await phases()
    finally:
        stop.set()
        await task


def done(sim: Sim, batch: Batch) -> int:
    b = sim.store.get_batch(None, batch.id)
    assert b is not None
    return b.request_counts.completed


def test_off_peak_waits_for_its_window_not_before_holds_and_a_tight_deadline_starts_early(
        make_sim: Callable[[Calendar], Sim]) -> None:
    sim = make_sim(Calendar(off_peak=hours(["00:00-06:00"])))
    relaxed = sim.submit("A", 10, schedule="off_peak")
    # 110 requests are 6600 s of work: by 90% of a 2 h window (6480 s) it cannot wait for midnight.
    tight = sim.submit("C", 110, window="2h", schedule="off_peak")
    held = sim.submit("B", 10, not_before=int(MIDNIGHT + 15 * H))

    async def phases() -> None:
        await sim.until(lambda: done(sim, tight) == 110)  # the tight off-peak batch started at once, and finished
        assert min(sim.backend.ran("C")) == MIDNIGHT + 12 * H
        assert max(sim.backend.ran("C")) < tight.expires_at
        assert sim.backend.ran("A") == [] and sim.backend.ran("B") == [], "held: off-peak and not_before"
        sim.set_time(MIDNIGHT + 15 * H)
        await sim.until(lambda: done(sim, held) == 10)
        assert min(sim.backend.ran("B")) >= MIDNIGHT + 15 * H
        assert sim.backend.ran("A") == [], "still before its off-peak window"
        sim.set_time(MIDNIGHT + 23.5 * H)
        await sim.idle()
        assert sim.backend.ran("A") == []
        sim.set_time(MIDNIGHT + 24 * H)
        await sim.until(lambda: done(sim, relaxed) == 10)
        assert min(sim.backend.ran("A")) == MIDNIGHT + 24 * H, "in its window"

    asyncio.run(running(sim, phases))


def test_a_model_with_windows_runs_nothing_outside_them(make_sim: Callable[[Calendar], Sim]) -> None:
    sim = make_sim(Calendar({MODEL: hours(["00:00-06:00"])}))
    batch = sim.submit("M", 50)

    async def phases() -> None:
        await sim.idle()
        assert sim.backend.chunks == [], "noon: the model is closed"
        sim.set_time(MIDNIGHT + 29.5 * H)  # 05:30 the next day: half an hour of the window left
        await sim.until(lambda: done(sim, batch) >= 30)
        times = sim.backend.ran("M")
        assert len(times) == 15 and done(sim, batch) == 30, "30 minutes of one-minute requests, then it closed"
        assert all(MIDNIGHT + 29.5 * H <= t < MIDNIGHT + 30 * H for t in times)
        sim.set_time(MIDNIGHT + 30.5 * H)
        await sim.idle(quiet_s=0.3)
        assert done(sim, batch) == 30, "nothing after 06:00"

    asyncio.run(running(sim, phases))


def test_create_refuses_bad_schedule_and_not_before(make_sim: Callable[[Calendar], Sim]) -> None:
    sim = make_sim(Calendar())
    for extra, param in (({"schedule": "off_peak"}, "schedule"), ({"schedule": "peak"}, "schedule"),
                         ({"not_before": "tomorrow"}, "not_before"),
                         ({"not_before": int(MIDNIGHT + 40 * H)}, "not_before")):
        with pytest.raises(InvalidInput) as exc:
            sim.submit("X", 1, **extra)
        assert exc.value.param == param, extra
