"""Validating → in_progress (or failed): stream the input file, persist every valid request.

Runs in a worker thread. Idempotent: a crash halfway leaves the batch in ``validating`` and the
next engine clears what was written and starts again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from freight.domain.batches import Batch, BatchError
from freight.domain.clock import Clock
from freight.engine.beside import beside
from freight.ports import BlobStore, NewRequest, Store
from freight.services.catalog import ModelCatalog
from freight.services.outputs import with_batch_schema, without_cache
from freight.wire.batch_input import BatchInputValidator, InputLimits, iter_lines

INSERT_CHUNK = 5000


def ingest_batch(
    batch: Batch, store: Store, blobs: BlobStore, catalog: ModelCatalog, limits: InputLimits, clock: Clock,
    on_model: Callable[[str], None] | None = None,
) -> bool | None:
    """Validate and persist a batch's requests. True when the batch went on to in_progress, None when
    another ingest had started it (this one read a stale status: nothing to do).
    ``on_model`` is told the batch's model once, at its first valid request (to start loading it)."""
    if not store.clear_requests(batch.id):
        return None
    key = store.file_blob_key(batch.input_file_id)
    if key is None or not blobs.exists(key):
        message = (f"Cannot find file {batch.input_file_id}; it was deleted before the batch could read it."
                   if key is None else
                   f"The bytes of file {batch.input_file_id} are not in this process's file store: do all freight "
                   "processes on this database share --blobs (docs/deployment.md)?")
        error = BatchError(code="invalid_request", message=message, param="input_file_id")
        store.fail_validation(batch.id, [error], int(clock.now()))
        return False
    validator = BatchInputValidator(endpoint=batch.endpoint, model_check=catalog.check, limits=limits)
    rows: list[NewRequest] = []
    idx = 0
    # Each 5,000 rows are stored beside the checking of the next ones (engine/beside.py), one insert at a
    # time; a failed insert comes out at the next one or at the end.
    with blobs.open(key) as fh, beside(store, "ingest") as run:
        storing: Future[None] | None = None

        def store_rows(chunk: list[NewRequest]) -> None:
            nonlocal storing
            if storing is not None:
                storing.result()
            storing = run(store.insert_requests, batch.id, chunk)

        for raw in iter_lines(fh, limits.max_line_bytes):
            request = validator.feed(raw)
            if request is None or validator.problem_count:
                continue  # once the batch is known to fail, only keep looking for problems
            body = request.body
            if batch.output_schema is not None:
                # checked by backends/output_check.py, or engine/lanes.py (which sends it nowhere)
                body = with_batch_schema(body, batch.output_schema)
            if not batch.use_cache and catalog.lane_for(request.model) is None:
                body = without_cache(body)  # honoured by backends/result_cache.py
            if idx == 0 and on_model is not None and request.model:
                on_model(request.model)
            rows.append(NewRequest(idx=idx, line=request.line, custom_id=request.custom_id, body=body))
            idx += 1
            if len(rows) >= INSERT_CHUNK:
                store_rows(rows)
                rows = []
        if storing is not None:
            storing.result()
    problems = validator.finish()
    now = int(clock.now())
    if problems:
        errors = [BatchError(code=p.code, message=p.message, param=p.param, line=p.line) for p in problems]
        if validator.problem_count > len(problems):
            errors.append(BatchError(
                code="too_many_errors",
                message=f"{validator.problem_count} lines have problems; only the first {len(problems)} are listed.",
            ))
        store.fail_validation(batch.id, errors, now)
        return False
    if rows:
        store.insert_requests(batch.id, rows)
    return store.start_batch(batch.id, total=idx, model=validator.model, at=now)
