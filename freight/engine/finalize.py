"""Writing a batch's output and error files, in input order, then its terminal status.

Runs in a worker thread. Idempotent: the files get fresh ids each time and are recorded together
with the status in one store transaction, so a crash before that leaves only unreferenced bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from freight.domain import ids
from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import Clock
from freight.domain.files import File, FileStatus
from freight.domain.requests import BATCH_EXPIRED, Outcome, Result
from freight.domain.steps import STEP_FAILED_CODE, ending_status
from freight.engine.beside import beside
from freight.ports import BlobStore, BlobWriter, Store, StoredResult
from freight.wire.batch_output import result_line

READ_CHUNK = 5000
WRITE_BUFFER = 1 << 20


class _Sink:
    def __init__(self, writer: BlobWriter):
        self.writer = writer
        self.buffer: list[bytes] = []
        self.pending = 0
        self.lines = 0

    def add(self, line: bytes) -> None:
        self.buffer.append(line)
        self.pending += len(line)
        self.lines += 1
        if self.pending >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write(b"".join(self.buffer))
            self.buffer = []
            self.pending = 0


def finalize_batch(
    batch: Batch, store: Store, blobs: BlobStore, clock: Clock, expected: Sequence[BatchStatus], final: BatchStatus
) -> bool:
    out_id, err_id = ids.new_file_id(), ids.new_file_id()
    out, err = _Sink(blobs.writer(out_id)), _Sink(blobs.writer(err_id))
    never_ran = 0
    try:
        # The next page is read beside the writing of this one (engine/beside.py; the results no longer change).
        with beside(store, "finalize") as fetch:
            page = fetch(store.results, batch.id, -1, READ_CHUNK)
            while chunk := page.result():
                page = fetch(store.results, batch.id, chunk[-1].idx, READ_CHUNK)
                for stored in chunk:
                    succeeded, line = _line(batch.id, stored)
                    (out if succeeded else err).add(line)
                    never_ran += stored.result.error_code == BATCH_EXPIRED
        ending = ending_status(final, never_ran)
        if ending is not final:
            # Every request has its own result: the batch completes (through finalizing, like any other).
            if store.set_status(batch.id, expected, BatchStatus.FINALIZING, int(clock.now())) is None:
                out.writer.abort()
                err.writer.abort()
                return False
            expected, final = [BatchStatus.FINALIZING], ending
        files: list[tuple[File, str] | None] = []
        now = int(clock.now())
        expires_at = now + batch.output_expires_after_s if batch.output_expires_after_s else None
        for sink, file_id, kind in ((out, out_id, "output"), (err, err_id, "error")):
            sink.flush()
            if sink.lines == 0:
                sink.writer.abort()
                files.append(None)
                continue
            size = sink.writer.commit()
            f = File(id=file_id, project=batch.project, filename=f"{batch.id}_{kind}.jsonl", purpose="batch_output",
                     bytes=size, created_at=now, status=FileStatus.PROCESSED, expires_at=expires_at)
            files.append((f, file_id))
    except BaseException:
        out.writer.abort()
        err.writer.abort()
        raise
    try:
        done = store.finish_batch(batch.id, expected, final, int(clock.now()), files[0], files[1])
    except BaseException:
        _drop_unless_recorded(batch.id, store, blobs, files)
        raise
    if not done:
        for pair in files:
            if pair is not None:
                blobs.delete(pair[1])
    return done


def _line(batch_id: str, stored: StoredResult) -> tuple[bool, bytes]:
    """(whether it goes to the output file, the line). A result that cannot be written as a line (a
    response nested too deep to re-encode, say) becomes an error line saying so, rather than failing
    the batch's finalizing on every try."""
    line_id = ids.batch_request_id(batch_id, stored.idx)
    try:
        return stored.result.outcome is Outcome.SUCCEEDED, result_line(line_id, stored.custom_id, stored.result)
    except (TypeError, ValueError) as exc:
        broken = Result.never_ran(STEP_FAILED_CODE, f"This request's result could not be written as a line: {exc}.")
        return False, result_line(line_id, stored.custom_id, broken)


def _drop_unless_recorded(batch_id: str, store: Store, blobs: BlobStore, files: list[tuple[File, str] | None]) -> None:
    """Recording the files failed: remove their bytes, unless the store did record them after all.

    (A commit can fail after it reached the disk; then the batch names these files and they must
    stay.) When even that cannot be read, the bytes stay: the orphan sweep at start-up removes
    bytes that no file refers to.
    """
    try:
        current = store.get_batch(None, batch_id)
    except Exception:
        return
    recorded = {current.output_file_id, current.error_file_id} if current is not None else set()
    for pair in files:
        if pair is not None and pair[0].id not in recorded:
            blobs.delete(pair[1])
