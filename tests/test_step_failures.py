"""A batch step's failures in a row are counted in the store (freight/engine/step_failures.py): the
process that takes the batch-steps lease over goes on counting, so a validation that keeps failing is
given up after ``step_max_tries`` failures across the fleet, not that many in each process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, BatchStatus
from freight.domain.clock import FixedClock
from freight.engine import engine as engine_module
from freight.engine.engine import Engine, EngineSettings
from freight.engine.step_lease import BATCH_STEPS
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore


class AlwaysFails:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any) -> bool:
        self.calls += 1
        raise RuntimeError("validation exploded")


def test_the_next_holder_of_the_steps_goes_on_counting_failures(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    failing = AlwaysFails()
    monkeypatch.setattr(engine_module, "ingest_batch", failing)
    store = SqliteStore(tmp_path / "db", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    settings = EngineSettings(poll_interval_s=0.01, step_retry_max_s=0.01, step_max_tries=4, step_lease_s=15)

    def engine(owner: str) -> Engine:
        return Engine(store, blobs, ModelCatalog([ScriptedBackend()]), clock, settings, owner=owner, steps=store)

    files, batches = FileService(store, blobs, clock), BatchService(store, clock)
    line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "freight-scripted", "messages": []}}
    file_id, writer = files.new_upload()
    writer.write((json.dumps(line) + "\n").encode())
    f = files.finish_upload("p", file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
    batch_id = batches.create("p", {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                    "completion_window": "24h"}).id

    def status() -> BatchStatus:
        got = store.get_batch("p", batch_id)
        assert got is not None
        return got.status

    async def scenario() -> None:
        a, b = engine("a"), engine("b")
        await asyncio.wait_for(a.run(until=lambda: failing.calls >= 2), 10)  # a stops: hands the lease over
        assert store.step_failure_counts() == {batch_id: 2}
        assert store.lease_holder(BATCH_STEPS, clock.now()) is None
        await asyncio.wait_for(b.run(until=lambda: status() in TERMINAL), 10)

    asyncio.run(scenario())
    got = store.get_batch("p", batch_id)
    assert got is not None and got.status is BatchStatus.FAILED
    assert failing.calls == 4, "given up after 4 failures in all (2 in a, 2 in b), not 4 more in b"
    assert "after 4 tries" in (got.errors or [])[0].message
    assert store.step_failure_counts() == {}, "a given-up batch's count is cleared"
    store.close()
