"""Cancel and expiry reach requests waiting inside a backend (``freight.ports.Withdrawal``).

The engine in-process (SQLite, the scripted backend with two slots, a fixed clock): a chunk of
requests is claimed at once, two run, the rest wait for a slot inside the backend. Cancelling or
expiring the batch must end the waiting ones as cancelled/expired at once, without running them;
only the two already running finish.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.requests import NEVER_RAN_MESSAGES, Failure, Result
from freight.domain.retry import RetryPolicy
from freight.engine.engine import Engine, EngineSettings
from freight.ports import WITHDRAWN, Completion, Withdrawal, current_withdrawal
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

N = 12
SLOTS = 2
#: How long each request runs: the time a cancel or an expiry has to reach the requests waiting for a slot
#: (0.3 s was once too short in a full-suite run on 2 loaded cores: two more requests got slots first).
RUN_S = 1.5


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.store_path = tmp_path / "db.sqlite"
        self.store = SqliteStore(self.store_path, synchronous="OFF")
        self.blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
        self.clock = FixedClock()
        self.backend = ScriptedBackend(chunk_size=N, max_concurrency=1, slots=SLOTS)
        settings = EngineSettings(lease_s=30, poll_interval_s=0.01, drain_timeout_s=30,
                                  retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0))
        self.engine = Engine(self.store, self.blobs, ModelCatalog([self.backend]), self.clock, settings)
        self.files = FileService(self.store, self.blobs, self.clock)
        self.batches = BatchService(self.store, self.clock, on_change=self.engine.wake)

    def submit(self, window: str = "24h") -> Batch:
        bodies = [{"model": "freight-scripted", "messages": [{"role": "user", "content": f"q{i}"}],
                   "script": {"sleep_s": RUN_S}} for i in range(N)]
        data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": b}) + "\n" for i, b in enumerate(bodies)).encode()
        file_id, writer = self.files.new_upload()
        writer.write(data)
        f = self.files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
        return self.batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                         "completion_window": window})

    def run(self, batch_id: str, during: Any) -> Batch:
        def done() -> bool:
            b = self.store.get_batch("p", batch_id)
            return b is not None and b.status in TERMINAL

        async def main() -> None:
            task = asyncio.create_task(self.engine.run(until=done))
            await during()
            await asyncio.wait_for(task, 20)

        asyncio.run(main())
        batch = self.store.get_batch("p", batch_id)
        assert batch is not None
        return batch

    async def two_running(self) -> None:
        """Wait until the whole batch is claimed and two requests run (the others wait for a slot)."""
        while self.backend.executed < SLOTS:
            await asyncio.sleep(0.005)

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        key = self.store.file_blob_key(file_id)
        assert key is not None
        with self.blobs.open(key) as fh:
            return [json.loads(line) for line in fh.read().decode().splitlines()]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


def test_cancel_ends_requests_waiting_in_the_backend_without_running_them(world: World) -> None:
    batch = world.submit()

    async def cancel() -> None:
        await world.two_running()
        await asyncio.to_thread(world.batches.cancel, "p", batch.id)

    done = world.run(batch.id, cancel)
    assert done.status is BatchStatus.CANCELLED
    out, err = world.lines(done.output_file_id), world.lines(done.error_file_id)
    assert len(out) == SLOTS and all(line["response"]["status_code"] == 200 for line in out)
    assert len(err) == N - SLOTS and {line["error"]["code"] for line in err} == {"batch_cancelled"}
    # they never ran: the plain message, not the one of a request abandoned while it ran (found by an audit)
    assert {line["error"]["message"] for line in err} == {NEVER_RAN_MESSAGES["batch_cancelled"]}
    assert world.backend.executed == SLOTS and world.backend.withdrawn == N - SLOTS
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (N, SLOTS, N - SLOTS)


def test_expiry_ends_requests_waiting_in_the_backend_without_running_them(world: World) -> None:
    batch = world.submit(window="60s")

    async def expire() -> None:
        await world.two_running()
        world.clock.advance(61)
        world.engine.wake()

    done = world.run(batch.id, expire)
    assert done.status is BatchStatus.EXPIRED
    out, err = world.lines(done.output_file_id), world.lines(done.error_file_id)
    assert len(out) == SLOTS
    assert len(err) == N - SLOTS and {line["error"]["code"] for line in err} == {"batch_expired"}
    assert {line["error"]["message"] for line in err} == {NEVER_RAN_MESSAGES["batch_expired"]}
    assert world.backend.executed == SLOTS and world.backend.withdrawn == N - SLOTS


def test_a_withdrawn_failure_is_retried_as_usual_when_the_call_was_not_withdrawn(world: World) -> None:
    """A backend cannot end requests early by itself: WITHDRAWN counts only when the engine withdrew the call."""
    calls: list[Withdrawal | None] = []

    class Liar(ScriptedBackend):
        async def execute(self, endpoint: str, bodies: Any) -> Any:
            calls.append(current_withdrawal.get())
            if len(calls) == 1:
                return [Failure(WITHDRAWN, "not really")] * len(bodies)
            return await super().execute(endpoint, bodies)

    world.backend = Liar(chunk_size=N, max_concurrency=1)
    world.engine = Engine(world.store, world.blobs, ModelCatalog([world.backend]), world.clock,
                          world.engine.settings)
    batch = world.submit()

    async def nothing() -> None:
        return None

    done = world.run(batch.id, nothing)
    assert done.status is BatchStatus.COMPLETED and len(world.lines(done.output_file_id)) == N
    assert len(calls) == 2 and all(isinstance(c, Withdrawal) and not c.is_set() for c in calls)


def test_a_stopped_engine_gives_back_the_requests_it_was_running(world: World) -> None:
    """SIGTERM to a worker: its claimed requests go back to pending at once (not after lease_s), a late
    answer of one of its calls is refused, and another engine runs every request exactly once."""
    batch = world.submit()
    stop = asyncio.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        task = asyncio.create_task(world.engine.run(stop))
        await world.two_running()
        held["claimed"] = world.store.open_counts(batch.id)
        held["attempts"] = attempts_of(world, batch.id)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(main())
    assert held["claimed"] == (0, N), "the whole batch was claimed by the first engine"
    assert world.store.open_counts(batch.id) == (N, 0), "given back, not left leased until lease_s"
    late = world.store.complete(batch.id, [Completion(0, held["attempts"][0], Result(status_code=200, body=b"{}"))])
    assert late == 0, "the stopped engine's attempt no longer counts"
    second = ScriptedBackend(chunk_size=N, max_concurrency=1)
    world.engine = Engine(world.store, world.blobs, ModelCatalog([second]), world.clock, world.engine.settings)

    async def nothing() -> None:
        return None

    world.backend = second
    done = world.run(batch.id, nothing)
    assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == N
    assert second.executed == N
    assert sorted(line["custom_id"] for line in world.lines(done.output_file_id)) == sorted(f"r{i}" for i in range(N))


def attempts_of(world: World, batch_id: str) -> list[str]:
    with sqlite3.connect(world.store_path) as c:
        return [row[0] for row in c.execute(
            "SELECT attempt_id FROM requests WHERE batch_id = ? AND state = 1 ORDER BY idx", (batch_id,))]


def test_withdrawal_runs_callbacks_once() -> None:
    w, seen = Withdrawal(), []
    w.add_callback(lambda: seen.append(1))
    w.set("cancelled")
    w.set("expired")
    w.add_callback(lambda: seen.append(2))
    assert seen == [1, 2] and w.reason == "cancelled" and w.failure().code == WITHDRAWN
    assert current_withdrawal.get() is None


def test_openai_http_requests_waiting_for_rate_limit_admission_end_when_withdrawn() -> None:
    from freight.backends.openai_http import OpenAIHTTPBackend
    from freight.testing.upstream import Upstream, UpstreamConfig

    secret = "sk-test-withdrawal-0123456789abcdef"
    with Upstream(UpstreamConfig(api_key=secret)) as up:
        # 2 requests a minute: after the first, each request waits ~30 s for admission.
        b = OpenAIHTTPBackend("remote", up.base_url, api_key_env="KEY", upstream_model="sim-model",
                              env={"KEY": secret}, rpm=2)
        bodies = [{"model": "remote", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 4}
                  for i in range(4)]

        async def go() -> list[Any]:
            withdrawal = Withdrawal()
            current_withdrawal.set(withdrawal)
            call = asyncio.ensure_future(b.execute("/v1/chat/completions", bodies))
            while up.stats().requests < 1:
                await asyncio.sleep(0.01)
            withdrawal.set("cancelled")
            try:
                return await asyncio.wait_for(call, 20)  # not the ~30 s per request that admission would take
            finally:
                await b.close()

        results = asyncio.run(go())
        sent = up.stats().requests
    withdrawn = [r for r in results if isinstance(r, Failure) and r.code == WITHDRAWN]
    assert sent < len(bodies) and len(withdrawn) == len(bodies) - sent, (sent, results)
