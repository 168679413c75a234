"""``freight run``'s loop (freight/cli/local_run.py) in this process, on the scripted backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from freight.backends.scripted import ScriptedBackend
from freight.cli import local_run
from freight.config import Settings
from freight.domain.batches import BatchStatus
from freight.runtime import build_runtime

CHAT = "/v1/chat/completions"


def test_the_run_ends_when_the_engine_stops_not_at_its_next_look(tmp_path: Path) -> None:
    """The loop looks at the batch every ``poll_s`` for the progress bar, and must also wake when the engine
    stops (the batch is done): with an hour between looks, the run still ends at once. (It waited for both the
    engine and a stop signal that never came, so every run ended up to ``poll_s`` late: 0.25 s for `freight run`.)
    """
    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT,
                    "body": {"model": "freight-scripted", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
        for i in range(3)))
    runtime = build_runtime(Settings(data_dir=tmp_path / "data"), backends=[ScriptedBackend()])
    seen: list[str] = []
    try:
        batch, _ = local_run.prepare(runtime, source, tmp_path / "out.jsonl", CHAT, "24h")

        async def go() -> object:
            return await asyncio.wait_for(
                local_run.run_batch(runtime, batch.id, lambda b: seen.append(str(b.status)), poll_s=3600), 60)

        done = asyncio.run(go())
    finally:
        runtime.close()
    assert getattr(done, "status", None) is BatchStatus.COMPLETED
    assert seen[-1] == "completed"


def _run_recording_threads(tmp_path: Path, exclusive: bool) -> tuple[set[str], int]:
    """Run 40 requests; the threads the claims and the chunks' results were stored on, and the count of
    output lines."""
    import threading

    tmp_path.mkdir()
    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT,
                    "body": {"model": "freight-scripted", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
        for i in range(40)))
    runtime = build_runtime(Settings(data_dir=tmp_path / "data"), backends=[ScriptedBackend(chunk_size=4)],
                            exclusive=exclusive)
    threads: set[str] = set()
    for name in ("claim_runnable", "complete"):
        real = getattr(runtime.store, name)

        def recorded(*args: object, _real: object = real, **kwargs: object) -> object:
            threads.add("loop" if threading.current_thread() is threading.main_thread() else "worker")
            return _real(*args, **kwargs)  # type: ignore[operator]

        setattr(runtime.store, name, recorded)
    try:
        batch, _ = local_run.prepare(runtime, source, tmp_path / "out.jsonl", CHAT, "24h")
        done = asyncio.run(asyncio.wait_for(local_run.run_batch(runtime, batch.id, lambda b: None), 60))
        assert getattr(done, "status", None) is BatchStatus.COMPLETED
        local_run.deliver(runtime, done, tmp_path / "out.jsonl", tmp_path / "err.jsonl")  # type: ignore[arg-type]
    finally:
        runtime.close()
    return threads, len((tmp_path / "out.jsonl").read_text().splitlines())


def test_a_run_alone_on_sqlite_claims_and_stores_chunks_on_the_loops_thread(tmp_path: Path) -> None:
    # freight run (exclusive, SQLite): no thread for the chunk calls; every request once all the same.
    assert _run_recording_threads(tmp_path / "alone", exclusive=True) == ({"loop"}, 40)
    # A process that shares its data dir keeps them on worker threads (a call may wait on another's lock).
    assert _run_recording_threads(tmp_path / "shared", exclusive=False) == ({"worker"}, 40)
