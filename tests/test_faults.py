"""Faults below the engine, in-process: a store write that fails ("database is locked", disk full), a
blob write cut short, a commit that fails, the clock jumping past a deadline or a lease.

Each must either recover (the batch finishes once the fault is gone) or end as a clear batch
error, never as corruption. After every scenario: guarantee 1 (one line per custom_id across the
output and error files, request_counts agreeing), one stored result per request, no half-written
blob under a key, and no blob that no file refers to.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.errors import InsufficientStorage, StoreError
from freight.domain.retry import RetryPolicy
from freight.engine import finalize, ingest
from freight.engine.engine import Engine, EngineSettings
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore, LocalBlobWriter
from freight.store.sqlite import SqliteStore

MODEL = "freight-scripted"
LEASE_S = 30.0


# ---- fault injectors ---------------------------------------------------------------------------


class FaultyStore:
    """The real store, except that chosen calls raise (or run a hook first).

    ``fail[name]`` is the set of 1-based call numbers of method ``name`` that raise ``error()``;
    ``before[name]`` runs before every call of ``name`` with the call number.
    """

    def __init__(self, inner: SqliteStore):
        self.inner = inner
        self.fail: dict[str, set[int]] = {}
        self.error: Callable[[], Exception] = lambda: StoreError("database is locked")
        self.before: dict[str, Callable[[int], None]] = {}
        self.calls: dict[str, int] = {}
        self.raised = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                n = self.calls[name] = self.calls.get(name, 0) + 1
                failing = n in self.fail.get(name, ())
                if failing:
                    self.raised += 1
            hook = self.before.get(name)
            if hook is not None:
                hook(n)
            if failing:
                raise self.error()
            return attr(*args, **kwargs)

        return call


class CutShortFile:
    """A file whose writes stop halfway with ``ENOSPC`` (a full disk), or whose flush fails (EIO)."""

    def __init__(self, fh: Any, mode: str):
        self.fh = fh
        self.mode = mode

    def write(self, data: bytes) -> int:
        if self.mode == "enospc":
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.fh.write(data))

    def flush(self) -> None:
        if self.mode == "eio":
            raise OSError(errno.EIO, "Input/output error")
        self.fh.flush()

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


class FaultyBlobs(LocalBlobStore):
    """Local blobs whose next ``fail_writers`` writers fail in ``mode`` (the file really is cut short)."""

    def __init__(self, root: Path):
        super().__init__(root, fsync=False)
        self.fail_writers = 0
        self.mode = "enospc"
        self.failed = 0

    def writer(self, key: str) -> LocalBlobWriter:
        writer = super().writer(key)
        if self.fail_writers > 0:
            self.fail_writers -= 1
            self.failed += 1
            writer._fh = CutShortFile(writer._fh, self.mode)  # type: ignore[assignment]
        return writer


# ---- the world -----------------------------------------------------------------------------------


@dataclass
class World:
    real: SqliteStore
    store: FaultyStore
    blobs: FaultyBlobs
    clock: FixedClock
    backend: ScriptedBackend
    engine: Engine
    files: FileService
    batches: BatchService

    def submit(self, bodies: list[dict[str, Any]], window: str = "24h") -> Batch:
        data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": b}) + "\n" for i, b in enumerate(bodies)).encode()
        file_id, writer = self.files.new_upload()
        writer.write(data)
        f = self.files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch",
                                     expires_after_s=None)
        return self.batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                         "completion_window": window})

    def run_until_done(self, batch_id: str, *, during: Any = None, timeout_s: float = 20) -> Batch:
        def done() -> bool:
            b = self.real.get_batch("p", batch_id)
            return b is not None and b.status in TERMINAL

        async def main() -> None:
            task = asyncio.create_task(self.engine.run(until=done))
            if during is not None:
                await during()
            await asyncio.wait_for(task, timeout_s)

        asyncio.run(main())
        batch = self.real.get_batch("p", batch_id)
        assert batch is not None
        return batch

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        key = self.real.file_blob_key(file_id)
        assert key is not None
        with self.blobs.open(key) as fh:
            data = fh.read()
        assert data.endswith(b"\n")
        return [json.loads(line) for line in data.decode().splitlines()]

    def check(self, batch: Batch, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Guarantee 1, one result per request in the store, and clean blobs."""
        out, err = self.lines(batch.output_file_id), self.lines(batch.error_file_id)
        ids = [line["custom_id"] for line in out + err]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n)), "lost or doubled lines"
        counts = batch.request_counts
        assert (counts.total, counts.completed, counts.failed) == (n, len(out), len(err))
        with sqlite3.connect(self.real.path) as c:
            states = dict(c.execute("SELECT state, count(*) FROM requests WHERE batch_id=? GROUP BY state",
                                    (batch.id,)).fetchall())
        assert states == {2: n}, states
        on_disk = {p.name for p in self.blobs.root.iterdir()}
        assert not [name for name in on_disk if ".tmp" in name], "a half-written blob was left behind"
        assert on_disk <= self.real.blob_keys(), f"orphan blobs: {on_disk - self.real.blob_keys()}"
        return out, err


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    real = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    store = FaultyStore(real)
    blobs = FaultyBlobs(tmp_path / "blobs")
    clock = FixedClock()
    backend = ScriptedBackend(chunk_size=4, max_concurrency=2)
    settings = EngineSettings(lease_s=LEASE_S, poll_interval_s=0.01, drain_timeout_s=5,
                              retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0),
                              store_retry_attempts=4, store_retry_base_s=0.001, store_retry_max_s=0.01,
                              step_retry_max_s=0.05)
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, settings)  # type: ignore[arg-type]
    yield World(real, store, blobs, clock, backend, engine, FileService(real, blobs, clock),
                BatchService(real, clock, on_change=engine.wake))
    real.close()


def chat(i: int, **script: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
    if script:
        body["script"] = script
    return body


def mixed(n: int) -> list[dict[str, Any]]:
    """Successes, a permanent 400, a transient 503 and a lost connection that succeed on a retry."""
    bodies = [chat(i) for i in range(n)]
    bodies[1] = chat(1, status=400)
    bodies[2] = chat(2, status=503, fail_times=1, key="two")
    bodies[3] = chat(3, status=0, fail_times=1, key="three")
    return bodies


# ---- a store that fails --------------------------------------------------------------------------

STORE_CALLS = ["active_batches", "file_blob_key", "clear_requests", "insert_requests", "start_batch",
               "claim_runnable", "complete", "retry_later", "open_counts", "set_status", "results", "finish_batch"]
ERRORS: dict[str, Callable[[], Exception]] = {
    "locked": lambda: StoreError("store write failed to start: database is locked"),
    "sqlite-locked": lambda: sqlite3.OperationalError("database is locked"),
    "disk-full": lambda: InsufficientStorage("database or disk is full"),
}


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("method", STORE_CALLS)
def test_a_store_call_that_fails_is_retried(world: World, method: str, error: str) -> None:
    batch = world.submit(mixed(12))
    world.store.fail = {method: {1, 2, 3}}
    world.store.error = ERRORS[error]
    done = world.run_until_done(batch.id)
    assert world.store.raised == 3, f"{method} was called {world.store.calls.get(method, 0)} times"
    assert done.status is BatchStatus.COMPLETED
    out, err = world.check(done, 12)
    assert [line["custom_id"] for line in err] == ["r1"]
    if method in ("complete", "retry_later"):
        # results held in memory were stored on a retry, not lost: nothing ran twice
        assert world.backend.executed == 12 + 2


@pytest.mark.parametrize("method", ["insert_requests", "results"])
def test_a_failing_call_made_beside_a_batch_step_is_retried(
    world: World, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on PostgreSQL: inserts while the next lines are checked, the next page of results while one is
    written, each on a thread of its own; the second and third calls (made there) fail."""
    monkeypatch.setattr(ingest, "INSERT_CHUNK", 4)
    monkeypatch.setattr(finalize, "READ_CHUNK", 4)
    world.store.out_of_process = True  # type: ignore[attr-defined]
    batch = world.submit(mixed(12))
    world.store.fail = {method: {2, 3}}
    done = world.run_until_done(batch.id)
    assert world.store.raised == 2 and world.store.calls[method] > 4
    assert done.status is BatchStatus.COMPLETED
    out, err = world.check(done, 12)
    assert [line["custom_id"] for line in err] == ["r1"] and len(out) == 11


def test_fail_validation_that_fails_is_retried(world: World) -> None:
    batch = world.submit([chat(0), {"model": "nope", "messages": []}])
    world.store.fail = {"fail_validation": {1, 2}}
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.FAILED and [e.code for e in done.errors or []] == ["model_not_found"]
    assert world.store.raised == 2 and done.output_file_id is None and done.error_file_id is None


def test_results_that_cannot_be_stored_run_again_after_their_lease(world: World) -> None:
    """The store stays down longer than the engine retries: the chunk's results are lost, the
    requests stay claimed until their lease runs out, then run again. Exactly one line each."""
    batch = world.submit([chat(i, key=f"k{i}") for i in range(8)])
    # two chunks of 4 run at once, each tries 4 times (store_retry_attempts): both give up
    world.store.fail = {"complete": set(range(1, 9))}

    async def expire_the_lease() -> None:
        while world.store.raised < 8:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        world.clock.advance(LEASE_S + 1)
        world.engine.wake()

    done = world.run_until_done(batch.id, during=expire_the_lease)
    assert done.status is BatchStatus.COMPLETED
    out, _ = world.check(done, 8)
    assert world.backend.executed == 8 + 8, "the requests of the lost chunks ran again"
    assert [line["response"]["body"]["attempt"] for line in out] == [2] * 8


def test_a_database_that_is_really_locked(tmp_path: Path) -> None:
    """Another connection holds SQLite's write lock again and again, longer than the store waits."""
    real = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF", busy_timeout_ms=20)
    counting = FaultyStore(real)
    blobs = FaultyBlobs(tmp_path / "blobs")
    clock = FixedClock()
    backend = ScriptedBackend(chunk_size=2, max_concurrency=2)
    engine = Engine(counting, blobs, ModelCatalog([backend]), clock,  # type: ignore[arg-type]
                    EngineSettings(lease_s=LEASE_S, poll_interval_s=0.01, store_retry_attempts=50,
                                   store_retry_base_s=0.005, store_retry_max_s=0.05, step_retry_max_s=0.05,
                                   # Validation is given up after step_max_tries failures in a row (by
                                   # design: steps.py); here the lock holder may win ten tries running on a
                                   # slow machine, which is not what this test is about.
                                   step_max_tries=1000,
                                   retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0)))
    w = World(real, counting, blobs, clock, backend, engine, FileService(real, blobs, clock),
              BatchService(real, clock, on_change=engine.wake))
    batch = w.submit([chat(i, sleep_s=0.01) for i in range(30)])
    locked_errors = 0
    stop = threading.Event()

    def hog() -> None:
        with sqlite3.connect(real.path, isolation_level=None, timeout=5) as c:
            while not stop.is_set():
                c.execute("BEGIN IMMEDIATE")
                time.sleep(0.06)
                c.execute("COMMIT")
                time.sleep(0.03)

    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    try:
        class Count(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                nonlocal locked_errors
                if record.exc_info and "locked" in str(record.exc_info[1]):
                    locked_errors += 1

        handler = Count()
        logging.getLogger("freight.engine").addHandler(handler)
        try:
            done = w.run_until_done(batch.id, timeout_s=60)
        finally:
            logging.getLogger("freight.engine").removeHandler(handler)
    finally:
        stop.set()
        thread.join()
    assert locked_errors > 0, "the lock holder never got in the engine's way: the test tested nothing"
    assert done.status is BatchStatus.COMPLETED
    w.check(done, 30)
    assert backend.executed == 30
    real.close()


# ---- a disk that fills up, a blob write cut short, a commit that fails ------------------------------


@pytest.mark.parametrize("mode", ["enospc", "eio"])
def test_finalizing_on_a_full_disk_waits_for_space(world: World, mode: str) -> None:
    batch = world.submit(mixed(10))
    world.blobs.mode = mode
    world.blobs.fail_writers = 3  # finalize's writers: output and error of the first try, output of the second

    done = world.run_until_done(batch.id)
    assert world.blobs.failed == 3 and world.engine.errors >= 2
    assert done.status is BatchStatus.COMPLETED
    world.check(done, 10)


def test_an_upload_to_a_full_disk_is_a_507_and_stores_nothing(world: World, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from freight.api.app import create_app
    from freight.config import Settings
    from freight.runtime import build_runtime

    settings = Settings(data_dir=tmp_path / "data", models={MODEL: {"backend": "scripted"}})
    rt = build_runtime(settings, lock=False)
    blobs = FaultyBlobs(tmp_path / "data" / "blobs")
    rt.files.blobs = blobs
    data = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": chat(i)}).encode() + b"\n" for i in range(2000))
    try:
        with TestClient(create_app(rt, run_engine=False)) as client:
            blobs.fail_writers = 1
            response = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
            assert response.status_code == 507, response.text
            error = response.json()["error"]
            assert error["code"] == "insufficient_storage" and error["type"] == "server_error"
            assert "nothing was stored" in error["message"] and response.headers["x-request-id"]
            assert client.get("/v1/files").json()["data"] == []
            assert list(blobs.root.iterdir()) == [], "nothing of the refused upload is left"

            # the database is full when the file is recorded: 507, and its bytes go too
            failing = FaultyStore(rt.store)
            failing.fail = {"insert_file": {1}}
            failing.error = lambda: InsufficientStorage("database or disk is full", code="insufficient_storage")
            rt.files.store = failing  # type: ignore[assignment]
            response = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
            assert response.status_code == 507 and response.json()["error"]["code"] == "insufficient_storage"
            assert list(blobs.root.iterdir()) == []

            # space again: the same upload goes through
            response = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
            assert response.status_code == 200 and response.json()["bytes"] == len(data)
    finally:
        rt.close()


# ---- the clock jumps -------------------------------------------------------------------------------


def test_clock_jumps_past_the_deadline_while_validating(world: World) -> None:
    batch = world.submit([chat(i) for i in range(10)], window="60s")
    world.store.before = {"start_batch": lambda n: world.clock.advance(61)}
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.EXPIRED
    out, err = world.check(done, 10)
    assert out == [] and {line["error"]["code"] for line in err} == {"batch_expired"}
    assert world.backend.executed == 0


def test_clock_jumps_past_the_deadline_while_finalizing(world: World) -> None:
    """Every request has its result: the batch completes; expiry has nothing left to take."""
    batch = world.submit(mixed(10), window="60s")
    world.store.before = {"results": lambda n: world.clock.advance(61) if n == 1 else None}
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED
    world.check(done, 10)


def test_clock_jumps_past_the_deadline_and_the_drain_with_requests_in_flight(world: World) -> None:
    batch = world.submit([chat(i, sleep_s=0.3) for i in range(12)], window="60s")

    async def jump() -> None:
        while world.real.open_counts(batch.id)[1] == 0:
            await asyncio.sleep(0.005)
        world.clock.advance(61 + 5 + 1)  # past the deadline and the drain timeout at once
        world.engine.wake()

    done = world.run_until_done(batch.id, during=jump)
    assert done.status is BatchStatus.EXPIRED
    out, err = world.check(done, 12)
    assert {line["error"]["code"] for line in err} == {"batch_expired"}
    assert any("had not finished" in line["error"]["message"] for line in err), "in-flight ones were abandoned"


def test_clock_jumps_past_the_lease_while_a_chunk_runs(world: World) -> None:
    """The engine takes the requests back from its own running chunk and runs them again: the
    first chunk's results come too late to be stored. Each request still has one line."""
    batch = world.submit([chat(i, sleep_s=0.3, key=f"k{i}") for i in range(4)])

    async def jump() -> None:
        while world.real.open_counts(batch.id)[1] == 0:
            await asyncio.sleep(0.005)
        world.clock.advance(LEASE_S + 1)
        world.engine.wake()

    done = world.run_until_done(batch.id, during=jump)
    assert done.status is BatchStatus.COMPLETED
    out, _ = world.check(done, 4)
    assert world.backend.executed == 8, "each request was sent twice"
    assert [line["response"]["body"]["attempt"] for line in out] == [2, 2, 2, 2]


def test_clock_jumps_past_the_drain_timeout_while_cancelling(world: World) -> None:
    batch = world.submit([chat(i, sleep_s=0.3) for i in range(12)])

    async def cancel_and_jump() -> None:
        while world.real.open_counts(batch.id)[1] == 0:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(world.batches.cancel, "p", batch.id)
        world.clock.advance(5 + 1)
        world.engine.wake()

    done = world.run_until_done(batch.id, during=cancel_and_jump)
    assert done.status is BatchStatus.CANCELLED
    _, err = world.check(done, 12)
    assert {line["error"]["code"] for line in err} == {"batch_cancelled"}
