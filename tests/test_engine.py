"""The engine end to end in-process: SQLite store, local blobs, the scripted backend, a fixed clock."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.retry import RetryPolicy
from freight.engine.engine import Engine, EngineSettings
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

MODEL = "freight-scripted"


@dataclass
class World:
    store: SqliteStore
    blobs: LocalBlobStore
    clock: FixedClock
    backend: ScriptedBackend
    engine: Engine
    files: FileService
    batches: BatchService

    def submit(self, bodies: list[dict[str, Any]], window: str = "24h", endpoint: str = "/v1/chat/completions",
               custom_ids: list[str] | None = None) -> Batch:
        ids = custom_ids or [f"r{i}" for i in range(len(bodies))]
        data = "".join(json.dumps({"custom_id": c, "method": "POST", "url": endpoint, "body": b}) + "\n"
                       for c, b in zip(ids, bodies, strict=True)).encode()
        file_id, writer = self.files.new_upload()
        writer.write(data)
        f = self.files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch",
                                     expires_after_s=None)
        return self.batches.create("p", {"input_file_id": f.id, "endpoint": endpoint, "completion_window": window})

    def run_until_done(self, batch_id: str, *, during: Any = None, timeout_s: float = 20) -> Batch:
        def done() -> bool:
            b = self.store.get_batch("p", batch_id)
            return b is not None and b.status in TERMINAL

        async def main() -> None:
            task = asyncio.create_task(self.engine.run(until=done))
            if during is not None:
                await during()
            await asyncio.wait_for(task, timeout_s)

        asyncio.run(main())
        batch = self.store.get_batch("p", batch_id)
        assert batch is not None
        return batch

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        key = self.store.file_blob_key(file_id)
        assert key is not None
        with self.blobs.open(key) as fh:
            return [json.loads(line) for line in fh.read().decode().splitlines()]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    backend = ScriptedBackend(chunk_size=4, max_concurrency=2)
    settings = EngineSettings(lease_s=30, poll_interval_s=0.01, drain_timeout_s=5,
                              retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0))
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, settings)
    yield World(store, blobs, clock, backend, engine, FileService(store, blobs, clock),
                BatchService(store, clock, on_change=engine.wake))
    store.close()


def chat(i: int, **script: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
    if script:
        body["script"] = script
    return body


def one_line_per_custom_id(w: World, batch: Batch, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out, err = w.lines(batch.output_file_id), w.lines(batch.error_file_id)
    ids = [line["custom_id"] for line in out + err]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n)), "lost or doubled lines"
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (n, len(out), len(err))
    return out, err


def test_a_batch_completes_with_outputs_in_input_order(world: World) -> None:
    batch = world.submit([chat(i) for i in range(23)])
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED and done.error_file_id is None
    out, err = one_line_per_custom_id(world, done, 23)
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(23)]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in out)
    assert out[5]["response"]["body"]["echo"]["messages"][0]["content"] == "q5"
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.model == MODEL


def test_permanent_errors_go_to_the_error_file_and_transient_ones_are_retried(world: World) -> None:
    bodies = [chat(i) for i in range(10)]
    bodies[2] = chat(2, status=400)
    bodies[5] = chat(5, status=503, fail_times=2, key="five")
    bodies[7] = chat(7, status=0, fail_times=1, key="seven")
    done = world.run_until_done(world.submit(bodies).id)
    out, err = one_line_per_custom_id(world, done, 10)
    assert [line["custom_id"] for line in err] == ["r2"]
    assert err[0]["response"]["status_code"] == 400 and err[0]["error"] is None
    assert err[0]["response"]["body"]["error"]["message"] == "scripted failure 400"
    by_id = {line["custom_id"]: line for line in out}
    assert by_id["r5"]["response"]["body"]["attempt"] == 3
    assert by_id["r7"]["response"]["body"]["attempt"] == 2
    assert world.backend.calls["five"] == 3


def test_attempts_run_out_into_the_error_file(world: World) -> None:
    bodies = [chat(0, status=503, key="a"), chat(1, status=0, key="b"), chat(2)]
    done = world.run_until_done(world.submit(bodies).id)
    out, err = one_line_per_custom_id(world, done, 3)
    by_id = {line["custom_id"]: line for line in err}
    assert by_id["r0"]["response"]["status_code"] == 503 and by_id["r0"]["error"] is None
    assert by_id["r1"]["response"] is None and by_id["r1"]["error"]["code"] == "connection_error"
    assert "gave up after 3 attempts" in by_id["r1"]["error"]["message"]
    assert world.backend.calls["a"] == 3 == world.backend.calls["b"]


def test_cancel_keeps_finished_results_and_closes_the_rest(world: World) -> None:
    bodies = [chat(i, sleep_s=0.05) for i in range(40)]
    batch = world.submit(bodies)

    async def cancel_midway() -> None:
        while True:
            b = world.store.get_batch("p", batch.id)
            assert b is not None
            if b.request_counts.completed >= 8:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(world.batches.cancel, "p", batch.id)

    done = world.run_until_done(batch.id, during=cancel_midway)
    assert done.status is BatchStatus.CANCELLED and done.cancelling_at and done.cancelled_at
    out, err = one_line_per_custom_id(world, done, 40)
    assert len(out) >= 8 and err, "expected partial results and cancelled lines"
    assert {line["error"]["code"] for line in err} == {"batch_cancelled"}
    assert world.backend.executed < 40


def test_expiry_keeps_finished_results_and_expires_the_rest(world: World) -> None:
    bodies = [chat(i, sleep_s=0.05) for i in range(40)]
    batch = world.submit(bodies, window="60s")

    async def jump_past_deadline() -> None:
        while True:
            b = world.store.get_batch("p", batch.id)
            assert b is not None
            if b.request_counts.completed >= 8:
                break
            await asyncio.sleep(0.01)
        world.clock.advance(61)
        world.engine.wake()

    done = world.run_until_done(batch.id, during=jump_past_deadline)
    assert done.status is BatchStatus.EXPIRED and done.expired_at
    out, err = one_line_per_custom_id(world, done, 40)
    assert len(out) >= 8 and err
    assert {line["error"]["code"] for line in err} == {"batch_expired"}
    assert err[0]["response"] is None


def test_validation_failure_reports_lines(world: World) -> None:
    bodies = [chat(0), {"model": "nope", "messages": []}, chat(2), {"messages": []}]
    done = world.run_until_done(world.submit(bodies).id)
    assert done.status is BatchStatus.FAILED and done.failed_at
    assert [(e.line, e.code, e.param) for e in done.errors or []] == [
        (2, "model_not_found", "body.model"), (4, "invalid_request", "body.model")]
    assert done.request_counts.total == 0 and world.backend.executed == 0


def test_requests_held_by_a_dead_worker_run_again_after_its_lease(world: World) -> None:
    batch = world.submit([chat(i) for i in range(6)])
    # validate only: drive one tick by hand, then let a "dead" worker take three requests
    asyncio.run(world.engine.tick())

    async def settle() -> None:
        for _ in range(200):
            b = world.store.get_batch("p", batch.id)
            if b is not None and b.status is BatchStatus.IN_PROGRESS:
                return
            await asyncio.sleep(0.01)
            await world.engine.tick()

    asyncio.run(settle())
    dead = world.store.claim(batch.id, "dead-worker", world.clock.now(), 30, 3, 3)
    assert len(dead) == 3
    world.clock.advance(31)  # the dead worker's lease runs out
    done = world.run_until_done(batch.id)
    out, _ = one_line_per_custom_id(world, done, 6)
    assert len(out) == 6
    # a late answer from the dead worker cannot change anything
    from freight.domain.requests import Result
    from freight.ports import Completion

    late = [Completion(c.idx, c.attempt_id, Result(status_code=200, body=b'"late"')) for c in dead]
    assert world.store.complete(batch.id, late) == 0


def test_one_big_batch_does_not_starve_another(world: World) -> None:
    big = world.submit([chat(i, sleep_s=0.01) for i in range(60)])
    small = world.submit([chat(i) for i in range(4)])
    order: list[str] = []

    async def watch() -> None:
        while len(order) < 2:
            for b in (big, small):
                got = world.store.get_batch("p", b.id)
                if got is not None and got.status in TERMINAL and b.id not in order:
                    order.append(b.id)
            await asyncio.sleep(0.01)

    world.run_until_done(big.id, during=watch)
    assert order[0] == small.id


class Recording(ScriptedBackend):
    """The scripted model, recording what each call was given."""

    def __init__(self) -> None:
        super().__init__(chunk_size=4, max_concurrency=2)
        self.given: list[list[str]] = []

    async def execute(self, endpoint: str, bodies: Any) -> Any:
        self.given.append([b.get("prompt") or b["messages"][0]["content"] for b in bodies])
        return await super().execute(endpoint, bodies)


def test_a_chunk_that_spans_batches_runs_each_part_with_its_own_batch(tmp_path: Path) -> None:
    # Chunks of 4, two batches of 3: one claim (one query) fills a chunk from both, in the policy's order.
    store, blobs, clock, backend = (SqliteStore(tmp_path / "db.sqlite", synchronous="OFF"),
                                    LocalBlobStore(tmp_path / "blobs", fsync=False), FixedClock(), Recording())
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, EngineSettings(poll_interval_s=0.01))
    world = World(store, blobs, clock, backend, engine, FileService(store, blobs, clock),
                  BatchService(store, clock, on_change=engine.wake))
    first = world.submit([chat(i) for i in range(3)])
    second = world.submit([{"model": MODEL, "prompt": f"p{i}"} for i in range(3)], endpoint="/v1/completions")

    async def main() -> None:
        while any(b.status is BatchStatus.VALIDATING for b in store.active_batches()):
            await engine.tick()
        await engine.tick()  # both batches in progress (and runnable) before the first claim
        await asyncio.wait_for(engine.run(until=lambda: not store.active_batches()), 20)

    try:
        asyncio.run(main())
        both = [store.get_batch("p", b.id) for b in (first, second)]
        assert all(b is not None and b.status is BatchStatus.COMPLETED for b in both)
        # The first chunk: the first batch's 3 and 1 of the second's (a call each); then the second's other 2.
        assert sorted(len(c) for c in backend.given) == [1, 2, 3], backend.given
        for batch in both:
            assert batch is not None
            out, _ = one_line_per_custom_id(world, batch, 3)
            assert all(line["response"]["body"]["endpoint"] == batch.endpoint for line in out)
    finally:
        store.close()


def test_deleted_and_expired_files_lose_their_bytes_only_when_no_batch_reads_them(world: World) -> None:
    batch = world.submit([chat(0, sleep_s=0.2)])
    input_key = world.store.file_blob_key(batch.input_file_id)
    assert input_key is not None
    world.files.delete("p", batch.input_file_id)
    assert world.engine.purge_files() == 0 and world.blobs.exists(input_key), "an active batch still reads it"
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED
    world.engine.purge_files()  # (the engine may have purged it already, at the tick after the batch ended)
    assert not world.blobs.exists(input_key)
    # the output file expires after its output_expires_after; here: none set, so it stays
    assert done.output_file_id is not None and world.store.get_file("p", done.output_file_id) is not None
    world.clock.advance(31 * 86400)
    assert world.engine.purge_files() == 0


def test_orphan_blobs_are_swept(world: World) -> None:
    writer = world.blobs.writer("file-" + "9" * 24)
    writer.write(b"half a finalize")
    writer.commit()
    batch = world.submit([chat(0)])
    assert world.engine.sweep_orphan_blobs() == 1
    assert world.blobs.exists(world.store.file_blob_key(batch.input_file_id) or "")


def test_the_running_engine_sweeps_old_orphan_blobs_and_leftover_step_counts(world: World) -> None:
    """With others on the store the start-up sweep cannot run: the batch-steps holder removes blobs no
    file refers to once they are older than ``orphan_blob_age_s``, and the step-failure counts of
    batches that are no longer active (a holder that died left them)."""
    old, young = "file-" + "7" * 24, "file-" + "8" * 24
    for key in (old, young):
        writer = world.blobs.writer(key)
        writer.write(b"left by a process that died finalizing")
        writer.commit()
    age = world.engine.settings.orphan_blob_age_s
    os.utime(world.blobs.root / old, (world.clock.now() - age - 10,) * 2)
    os.utime(world.blobs.root / young, (world.clock.now() - age + 600,) * 2)
    world.store.count_step_failure("batch_gone")
    batch = world.submit([chat(0)])
    world.store.count_step_failure(batch.id)
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert not world.blobs.exists(old) and world.blobs.exists(young)
    assert world.blobs.exists(world.store.file_blob_key(done.output_file_id or "") or "")
    assert world.store.step_failure_counts() == {}


class CountingBackend(ScriptedBackend):
    """A scripted backend whose first ``fail_starts`` starts raise (a model file not there yet, say)."""

    def __init__(self, model_id: str, fail_starts: int = 0) -> None:
        super().__init__(model_id, chunk_size=4, max_concurrency=2)
        self.starts = 0
        self.fail_starts = fail_starts

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.fail_starts:
            raise RuntimeError("model not loadable yet")


def test_backends_start_when_their_first_work_arrives_and_a_failed_start_is_retried(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    busy = CountingBackend(MODEL, fail_starts=2)
    idle = CountingBackend("never-used")
    world.engine = Engine(world.store, world.blobs, ModelCatalog([busy, idle]), world.clock, world.engine.settings)
    world.batches = BatchService(world.store, world.clock, on_change=world.engine.wake)
    batch = world.submit([chat(i) for i in range(6)])
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED
    one_line_per_custom_id(world, done, 6)
    # Two failures (no request claimed meanwhile, none charged an attempt), then loaded: the first start
    # is the ingest's warm-up as it read the batch's model, the others the dispatcher's.
    assert busy.starts == 3
    assert idle.starts == 0  # a model nobody asked for is never loaded
    assert world.engine.errors == 1  # the dispatcher's failed start; the warm-up's is logged at debug only
    said = [(r.levelname, r.getMessage()) for r in caplog.records if getattr(r, "event", "") == "backend_start_failed"]
    assert said.count(("ERROR", "backend failed to start (RuntimeError: model not loadable yet); trying again")) == 1
    with sqlite3.connect(world.store.path) as db:
        attempts = [row[0] for row in db.execute("SELECT attempts FROM requests WHERE batch_id=?", (batch.id,))]
    assert attempts == [1] * 6


class GatedBackend(ScriptedBackend):
    """A scripted backend whose start waits until the test lets it finish, recording each call."""

    def __init__(self) -> None:
        super().__init__(MODEL, chunk_size=4, max_concurrency=2)
        self.starts = 0
        self.gate = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1
        await self.gate.wait()


def test_an_ingest_starts_loading_its_model_before_it_ends_and_the_load_is_shared(world: World) -> None:
    gated = GatedBackend()
    world.engine = Engine(world.store, world.blobs, ModelCatalog([gated]), world.clock, world.engine.settings)
    world.batches = BatchService(world.store, world.clock, on_change=world.engine.wake)
    batch = world.submit([chat(i) for i in range(8)])
    seen: list[BatchStatus] = []

    async def during() -> None:
        while gated.starts == 0:
            await asyncio.sleep(0.001)
        # The load began; the batch cannot have started running (nothing runs before the load ends).
        b = world.store.get_batch("p", batch.id)
        assert b is not None
        seen.append(b.status)
        await asyncio.sleep(0.2)  # the dispatcher wants the backend too meanwhile: it waits for the same load
        gated.gate.set()

    done = world.run_until_done(batch.id, during=during)
    assert done.status is BatchStatus.COMPLETED
    one_line_per_custom_id(world, done, 8)
    assert seen and seen[0] in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
    assert gated.starts == 1  # one load, shared by the warm-up and the dispatcher
    assert gated.executed == 8


def test_ingest_names_the_batch_model_once_before_it_stores_anything(world: World) -> None:
    from freight.engine.ingest import ingest_batch
    from freight.wire.batch_input import InputLimits

    batch = world.submit([chat(i) for i in range(12)])
    told: list[tuple[str, BatchStatus, int]] = []

    def on_model(model: str) -> None:
        b = world.store.get_batch("p", batch.id)
        assert b is not None
        told.append((model, b.status, world.store.open_counts(batch.id)[0]))

    catalog = ModelCatalog([world.backend])
    assert ingest_batch(batch, world.store, world.blobs, catalog, InputLimits(), world.clock, on_model)
    assert told == [(MODEL, BatchStatus.VALIDATING, 0)]


def test_finished_chunks_wake_the_engine_only_once_the_claims_run_dry(tmp_path: Path) -> None:
    """While claims find work, a finished chunk does not make the engine look at every batch (a tick);
    once they run dry, each finished chunk does, so the batch ends at once rather than at the next
    ``poll_interval_s`` (an hour here)."""
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs, clock = LocalBlobStore(tmp_path / "blobs", fsync=False), FixedClock()
    backend = ScriptedBackend(chunk_size=4, max_concurrency=2)
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, EngineSettings(poll_interval_s=3600))
    w = World(store, blobs, clock, backend, engine, FileService(store, blobs, clock),
              BatchService(store, clock, on_change=engine.wake))
    batch = w.submit([chat(i) for i in range(200)])  # 50 chunks
    ticks = 0
    tick = engine.tick

    async def counted() -> None:
        nonlocal ticks
        ticks += 1
        await tick()

    engine.tick = counted  # type: ignore[method-assign]
    done = w.run_until_done(batch.id, timeout_s=30)
    assert done.status is BatchStatus.COMPLETED and backend.executed == 200
    one_line_per_custom_id(w, done, 200)
    assert ticks < 20, f"{ticks} ticks for 50 chunks"
    store.close()


def test_a_step_cancelled_before_it_starts_leaves_no_unawaited_coroutine(world: World) -> None:
    # The engine stopping cancels its batch steps; one spawned just before never started, and its
    # coroutine used to be left unawaited (Python's "coroutine 'Engine._finish' was never awaited").
    import gc
    import warnings

    ran: list[str] = []

    async def step() -> None:
        ran.append("ran")

    async def main() -> None:
        world.engine._spawn("b", step(), wake=False)
        for task in list(world.engine._tasks):
            task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert ran == []
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]


def test_an_ingest_spawned_from_a_stale_status_does_nothing(world: World) -> None:
    """Found by an audit: a tick that read a batch as validating before its ingest ended spawned a second
    ingest, whose inserts collided (a 'batch step failed' traceback). It now sees the batch started."""
    from freight.engine.ingest import ingest_batch
    from freight.wire.batch_input import InputLimits

    batch = world.submit([chat(i) for i in range(3)])
    stale = world.store.get_batch(None, batch.id)
    assert stale is not None and stale.status is BatchStatus.VALIDATING
    assert ingest_batch(stale, world.store, world.blobs, world.engine.catalog, InputLimits(), world.clock) is True
    again = ingest_batch(stale, world.store, world.blobs, world.engine.catalog, InputLimits(), world.clock)
    assert again is None and world.store.open_counts(batch.id) == (3, 0)


def test_a_file_whose_bytes_are_not_in_this_processs_store_says_so(world: World) -> None:
    """Found by an audit: with PostgreSQL and no shared --blobs, the worker could not see the API's file
    and the batch failed with 'it was deleted', which it was not."""
    from freight.engine.ingest import ingest_batch
    from freight.wire.batch_input import InputLimits

    batch = world.submit([chat(0)])
    key = world.store.file_blob_key(batch.input_file_id)
    assert key is not None
    world.blobs.delete(key)  # (as seen from a process whose --blobs is elsewhere)
    assert ingest_batch(batch, world.store, world.blobs, world.engine.catalog, InputLimits(), world.clock) is False
    failed = world.store.get_batch(None, batch.id)
    assert failed is not None and failed.errors is not None
    assert "share --blobs" in failed.errors[0].message and "deleted" not in failed.errors[0].message
