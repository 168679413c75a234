"""``freight run``: a durable local batch without a server.

The batch is keyed by the input's content, the endpoint and the output path: started again with
the same arguments (after Ctrl-C, kill -9 or a crash) it finds its batch in the data dir and
carries on; requests that already have a result never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from freight.domain.batches import TERMINAL, Batch, BatchStatus
from freight.domain.errors import InvalidInput
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED
from freight.runtime import Runtime
from freight.wire import jsonx

PROJECT = "local"


@dataclass
class RunOutcome:
    batch: Batch
    output_path: Path
    errors_path: Path
    elapsed_s: float
    resumed: bool


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def infer_endpoint(path: Path) -> str:
    """The url of the first line that has one (every line must match it; validation checks)."""
    lines = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            lines += 1
            try:
                obj = jsonx.loads(raw.lstrip(b"\xef\xbb\xbf"))
            except jsonx.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("url"), str):
                return str(obj["url"])
    if not lines:
        raise InvalidInput("The input file is empty. A batch input file needs at least one request line.",
                           code="empty_file")
    raise InvalidInput("Cannot tell the endpoint from the input (no line has a 'url'); pass --endpoint.")


def unwritable(dest: Path) -> str | None:
    """Why a result file could not be written at ``dest`` (None: it can), asked before the batch runs rather
    than found after it (``_copy_blob`` writes ``dest.tmp`` and renames it)."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):
            pass
        tmp.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _copy_blob(rt: Runtime, file_id: str | None, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        if file_id is not None:
            key = rt.store.file_blob_key(file_id)
            if key is not None:
                with rt.blobs.open(key) as fh:
                    while chunk := fh.read(1 << 20):
                        out.write(chunk)
    os.replace(tmp, dest)


def prepare(rt: Runtime, input_path: Path, output_path: Path, endpoint: str, window: str) -> tuple[Batch, bool]:
    key = "run:" + hashlib.sha256(
        f"{_digest(input_path)}|{endpoint}|{output_path.resolve()}".encode()).hexdigest()
    existing = rt.store.find_batch(PROJECT, key)
    if existing is not None:
        return existing, True
    file_id, writer = rt.files.new_upload()
    try:
        with open(input_path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    f = rt.files.finish_upload(PROJECT, file_id, writer, filename=input_path.name, purpose="batch",
                               expires_after_s=None)
    batch = rt.batches.create(PROJECT, {"input_file_id": f.id, "endpoint": endpoint, "completion_window": window},
                              idempotency_key=key)
    return batch, False


async def run_batch(rt: Runtime, batch_id: str, on_progress: object = None, poll_s: float = 0.25) -> Batch:
    """Run the engine until this batch is terminal; call ``on_progress(batch)`` as it moves."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError):  # incl. NotImplementedError: a loop without signals
            loop.add_signal_handler(sig, stop.set)

    def finished() -> bool:  # after each engine tick: the engine stops as soon as the batch is done
        if batch_id in rt.engine.active_ids:
            return False  # (what the tick just read: no store call on the event loop while the batch runs)
        done = rt.store.get_batch(PROJECT, batch_id)
        return done is None or done.status in TERMINAL

    engine_task = asyncio.create_task(rt.engine.run(stop, until=finished))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            batch = await asyncio.to_thread(rt.store.get_batch, PROJECT, batch_id)
            assert batch is not None
            if callable(on_progress):
                on_progress(batch)
            if batch.status in TERMINAL or stop.is_set() or engine_task.done():
                break
            await asyncio.wait({stopped, engine_task}, timeout=poll_s,  # whichever comes first
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        stop.set()
        await engine_task
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError):  # incl. NotImplementedError: a loop without signals
                loop.remove_signal_handler(sig)
        for backend in rt.catalog.backends:
            await backend.close()
    return batch


def deliver(rt: Runtime, batch: Batch, output_path: Path, errors_path: Path) -> None:
    """Copy the result files out, once the batch has them: an interrupted run delivers nothing."""
    if batch.status is BatchStatus.FAILED or batch.status not in TERMINAL:
        return
    _copy_blob(rt, batch.output_file_id, output_path)
    _copy_blob(rt, batch.error_file_id, errors_path)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


_NEVER_SENT = (BATCH_EXPIRED, BATCH_CANCELLED)


def never_sent(errors_path: Path) -> int:
    """Lines of the error file written for requests that were never sent: the batch expired or was cancelled
    first (they count as failed, but nothing ran or was paid for)."""
    n = 0
    if not errors_path.is_file():
        return 0
    with open(errors_path, "rb") as fh:
        for line in fh:
            if any(code.encode() in line for code in _NEVER_SENT):  # (a quick look before parsing)
                error = jsonx.loads(line).get("error") or {}
                n += error.get("code") in _NEVER_SENT
    return n
