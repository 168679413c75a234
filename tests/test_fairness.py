"""One tenant's work cannot crowd out another's: the engine claims chunks for the project that has used
the least model time for its weight (freight.engine.engine.FairTurns; the policy: tests/test_scheduling.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.requests import Failure, Result
from freight.engine.engine import Engine, EngineSettings, FairTurns
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore


def _batch(batch_id: str, project: str) -> Batch:
    return Batch(id=batch_id, project=project, endpoint="/v1/embeddings", input_file_id="f", completion_window="1h",
                 status=BatchStatus.IN_PROGRESS, created_at=0, expires_at=1)


def test_turns_go_round_projects_by_model_time_used() -> None:
    batches = [_batch("a1", "a"), _batch("a2", "a"), _batch("a3", "a"), _batch("b1", "b"), _batch("c1", "c")]
    turns = FairTurns()
    served = []
    for _ in range(6):
        first = turns.order(batches)[0]  # every batch always has work here
        turns.served(first)
        turns.used(first, 0.0, 4)  # a chunk of 4 requests ended (charged at least 1 ms each)
        served.append(first.id)
    assert served == ["a1", "b1", "c1", "a1", "b1", "c1"]
    # a batch with nothing to claim is passed over for the same project's next, then the next project's
    assert [b.id for b in turns.order(batches)] == ["a1", "a2", "a3", "b1", "c1"]
    paused = replace(batches[0], paused_at=1)
    assert [b.id for b in turns.order([paused, *batches[1:]])] == ["a2", "a3", "b1", "c1"], "no turn when paused"
    assert turns.order([]) == []


class Recording(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__(chunk_size=4, max_concurrency=1)
        self.chunks: list[str] = []

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        self.chunks.append(bodies[0]["messages"][0]["content"].split("-")[0])
        return await super().execute(endpoint, bodies)


def test_a_tenant_with_many_big_batches_gets_one_chunk_in_two(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    backend = Recording()
    engine = Engine(store, blobs, ModelCatalog([backend]), clock, EngineSettings(poll_interval_s=0.01))
    files, batches = FileService(store, blobs, clock), BatchService(store, clock, on_change=engine.wake)

    def submit(project: str, n: int) -> Batch:
        data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "freight-scripted", "messages": [{"role": "user", "content": f"{project}-{i}"}]}}) + "\n"
            for i in range(n)).encode()
        file_id, writer = files.new_upload()
        writer.write(data)
        f = files.finish_upload(project, file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
        return batches.create(project, {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                        "completion_window": "24h"})

    heavy = [submit("heavy", 40) for _ in range(3)]
    light = submit("light", 12)
    everything = [*heavy, light]

    async def main() -> None:
        # validate everything first, so the dispatcher sees all four batches from its first claim
        while any(b.status is BatchStatus.VALIDATING for b in store.active_batches()):
            await engine.tick()
            await asyncio.sleep(0.01)
        await engine.tick()  # now the engine's list of runnable batches has all four

        def done() -> bool:
            return all((b := store.get_batch(None, x.id)) is not None and b.status in TERMINAL for x in everything)

        await asyncio.wait_for(engine.run(until=done), 30)

    try:
        asyncio.run(main())
    finally:
        store.close()
    # 30 chunks of "heavy" work and 3 of "light": light's three come 2nd, 4th and 6th, not after heavy's 30
    assert backend.chunks[:6] == ["heavy", "light"] * 3, backend.chunks
    assert backend.chunks.count("heavy") == 30
