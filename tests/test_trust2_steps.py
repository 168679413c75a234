"""No batch step may hold a batch for ever, and a batch whose requests all ran completes (issue 10,
items 1 and 14): the policies of freight/domain/steps.py, then the engine applying them in-process
(SQLite store, local blobs, the scripted backend, a fixed clock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.requests import Result
from freight.domain.retry import RetryPolicy
from freight.domain.steps import StepPolicy, ending_status, give_up_status, step_failed_error
from freight.engine import engine as engine_module
from freight.engine.engine import Engine, EngineSettings
from freight.engine.finalize import finalize_batch
from freight.engine.ingest import ingest_batch
from freight.ports import Completion
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

MODEL = "freight-scripted"
NOW = 1_700_000_000.0


# ---- the policies, pure ----------------------------------------------------------------------

def test_a_step_is_given_up_after_max_tries_and_sooner_once_the_window_has_passed() -> None:
    policy = StepPolicy(max_tries=5, tries_past_window=2, base_delay_s=1, max_delay_s=8)
    before = [policy.after_failure(n, NOW, NOW + 60, can_give_up=True) for n in range(1, 6)]
    assert [v.give_up for v in before] == [False, False, False, False, True]
    assert [v.delay_s for v in before[:4]] == [1, 2, 4, 8]
    after = [policy.after_failure(n, NOW + 60, NOW + 60, can_give_up=True) for n in (1, 2)]
    assert [v.give_up for v in after] == [False, True]


def test_a_step_that_cannot_be_given_up_keeps_its_capped_backoff() -> None:
    policy = StepPolicy(max_tries=2, tries_past_window=1, base_delay_s=1, max_delay_s=8)
    for n in (1, 2, 50, 10_000):
        verdict = policy.after_failure(n, NOW + 99, NOW, can_give_up=False)
        assert not verdict.give_up and verdict.delay_s == min(8, 2 ** (n - 1))
    assert not policy.after_failure(1, NOW, None, can_give_up=True).give_up


def test_where_a_given_up_validation_ends_and_what_it_says() -> None:
    assert give_up_status(BatchStatus.VALIDATING) is BatchStatus.FAILED
    assert give_up_status(BatchStatus.CANCELLING) is BatchStatus.CANCELLED
    error = step_failed_error(3, True, "RuntimeError: boom")
    assert error.code == "internal_error" and "boom" in error.message and "window" in error.message


def test_a_batch_whose_every_request_has_its_result_ends_completed() -> None:
    assert ending_status(BatchStatus.EXPIRED, never_ran=0) is BatchStatus.COMPLETED
    assert ending_status(BatchStatus.EXPIRED, never_ran=1) is BatchStatus.EXPIRED
    assert ending_status(BatchStatus.CANCELLED, never_ran=0) is BatchStatus.CANCELLED
    assert ending_status(BatchStatus.COMPLETED, never_ran=0) is BatchStatus.COMPLETED


# ---- the engine applying them ----------------------------------------------------------------

@dataclass
class World:
    store: SqliteStore
    blobs: LocalBlobStore
    clock: FixedClock
    engine: Engine
    files: FileService
    batches: BatchService

    def submit(self, lines: list[bytes], window: str = "24h") -> Batch:
        file_id, writer = self.files.new_upload()
        writer.write(b"".join(raw + b"\n" for raw in lines))
        f = self.files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch",
                                     expires_after_s=None)
        return self.batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/embeddings",
                                         "completion_window": window})

    def replace_input(self, batch: Batch, data: bytes) -> None:
        """What a file stored by an earlier freight (before the upload checked nesting) holds."""
        key = self.store.file_blob_key(batch.input_file_id)
        assert key is not None
        writer = self.blobs.writer(key)
        writer.write(data)
        writer.commit()

    def run_until_done(self, batch_id: str, timeout_s: float = 10) -> Batch:
        def done() -> bool:
            b = self.store.get_batch("p", batch_id)
            return b is not None and b.status in TERMINAL

        asyncio.run(asyncio.wait_for(self.engine.run(until=done), timeout_s))
        batch = self.store.get_batch("p", batch_id)
        assert batch is not None
        return batch


def make_world(tmp_path: Path, **settings: Any) -> World:
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock(NOW)
    backend = ScriptedBackend(chunk_size=4, max_concurrency=2)
    engine_settings = EngineSettings(lease_s=30, poll_interval_s=0.01, drain_timeout_s=5, step_retry_max_s=0.02,
                                     retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0), **settings)
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, engine_settings)
    return World(store, blobs, clock, engine, FileService(store, blobs, clock),
                 BatchService(store, clock, on_change=engine.wake))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, step_max_tries=3, step_tries_past_window=2)
    yield w
    w.store.close()


def request(custom_id: str, body_input: Any = "hello") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": MODEL, "input": body_input}}).encode()


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_a_stored_file_with_a_deep_line_fails_validation_instead_of_failing_for_ever(world: World) -> None:
    batch = world.submit([request("a"), request("b"), request("c")])
    world.replace_input(batch, request("a") + b"\n" + request("b", deep(300)) + b"\n" + request("c") + b"\n")
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.FAILED
    assert [(e.line, e.code) for e in done.errors or []] == [(2, "nesting_too_deep")]
    assert world.engine.errors == 0  # a validation problem, not a failing step


class AlwaysFails:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any) -> bool:
        self.calls += 1
        raise RuntimeError("validation exploded")


def test_validation_that_always_fails_ends_the_batch_failed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = AlwaysFails()
    monkeypatch.setattr(engine_module, "ingest_batch", failing)
    batch = world.submit([request("a")])
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.FAILED and done.failed_at
    assert failing.calls == 3
    (error,) = done.errors or []
    assert error.code == "internal_error" and "RuntimeError: validation exploded" in error.message
    assert done.request_counts.total == 0 and done.output_file_id is None and done.error_file_id is None


def test_validation_failing_past_the_window_is_given_up_sooner(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_world(tmp_path, step_max_tries=1000, step_tries_past_window=2)
    failing = AlwaysFails()
    monkeypatch.setattr(engine_module, "ingest_batch", failing)
    batch = w.submit([request("a")], window="60s")
    w.clock.advance(61)
    done = w.run_until_done(batch.id)
    assert done.status is BatchStatus.FAILED and failing.calls == 2
    assert "window" in (done.errors or [])[0].message
    w.store.close()


def test_cancelling_a_batch_whose_validation_always_fails_ends_cancelled(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = AlwaysFails()
    monkeypatch.setattr(engine_module, "ingest_batch", failing)
    batch = world.submit([request("a"), request("b")])
    world.batches.cancel("p", batch.id)
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.CANCELLED and done.cancelled_at
    assert failing.calls == 3
    assert [e.code for e in done.errors or []] == ["internal_error"]
    assert done.request_counts.total == 0


def finish_every_request_by_hand(world: World, batch: Batch, n: int) -> Batch:
    """Validate, then store a result for every request, without running the engine loop."""
    assert ingest_batch(batch, world.store, world.blobs, world.engine.catalog, world.engine.settings.input_limits,
                        world.clock)
    claimed = world.store.claim(batch.id, "worker", world.clock.now(), 30, n, 3)
    assert len(claimed) == n
    world.store.complete(batch.id, [Completion(c.idx, c.attempt_id, Result(200, b'{"ok":true}', "req_1"))
                                    for c in claimed])
    current = world.store.get_batch("p", batch.id)
    assert current is not None and current.status is BatchStatus.IN_PROGRESS
    return current


def test_a_batch_that_finished_after_its_deadline_but_before_finalizing_completes(world: World) -> None:
    batch = world.submit([request(f"r{i}") for i in range(5)], window="60s")
    finish_every_request_by_hand(world, batch, 5)
    world.clock.advance(120)
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED and done.finalizing_at and done.completed_at
    assert done.expired_at is None and done.error_file_id is None
    assert done.request_counts.completed == 5


def test_closing_as_expired_a_batch_with_every_result_completes_it(world: World) -> None:
    # The engine decided to expire it on counts read a moment before the last results were stored.
    batch = world.submit([request(f"r{i}") for i in range(3)], window="60s")
    current = finish_every_request_by_hand(world, batch, 3)
    world.clock.advance(120)
    assert finalize_batch(current, world.store, world.blobs, world.clock, [BatchStatus.IN_PROGRESS],
                          BatchStatus.EXPIRED)
    done = world.store.get_batch("p", batch.id)
    assert done is not None and done.status is BatchStatus.COMPLETED and done.finalizing_at
    assert done.output_file_id is not None and done.error_file_id is None


def test_a_batch_with_requests_left_when_its_window_ends_still_expires(world: World) -> None:
    batch = world.submit([request(f"r{i}") for i in range(3)], window="60s")
    assert ingest_batch(batch, world.store, world.blobs, world.engine.catalog, world.engine.settings.input_limits,
                        world.clock)
    world.clock.advance(120)
    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.EXPIRED and done.request_counts.failed == 3
