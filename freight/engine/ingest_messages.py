"""Validating → in_progress for a Message Batch: every request is kept, a bad one gets its error.

An OpenAI batch file fails as a whole when a line is bad (``ingest.py``). A Message Batch does
not: Anthropic validates each request's ``params`` asynchronously and reports a bad one as an
``errored`` result (shared/reference/batch-apis.md §4.4). The create already checked what is
checked synchronously (custom_id, params being an object, one model), and wrote the input file
itself, so here only ``params`` are looked at:

- no ``model``, or not a string: 400 ``invalid_request_error``;
- a model this freight does not serve on ``/v1/messages``: 404 ``not_found_error``;
- ``stream: true``: 400 ``invalid_request_error``;
- nested more than ``MAX_JSON_NESTING`` levels (only a batch made before the create checked it):
  400 ``invalid_request_error``.

Those requests are stored already finished (and counted); the rest are pending. Everything the
params hold beyond that is the backend's business (the Messages adapter refuses what does not
translate, with ``invalid_request_error``). Idempotent like ``ingest.py``: a crash halfway starts
validation over.
"""

from __future__ import annotations

from typing import Any

from freight.domain import ids
from freight.domain.batches import Batch, BatchError
from freight.domain.cache_key import NO_CACHE_KEY
from freight.domain.clock import Clock
from freight.domain.message_batches import MESSAGES_ENDPOINT
from freight.domain.nesting import MAX_JSON_NESTING, too_deep_message
from freight.domain.requests import Result
from freight.ports import BlobStore, NewRequest, Store
from freight.services.catalog import ModelCatalog
from freight.wire import jsonx
from freight.wire.batch_input import iter_lines
from freight.wire.json_stream import nests_deeper_than

INSERT_CHUNK = 1000
#: The input file was written by freight itself, each line already within the create's limits.
MAX_LINE_BYTES = 1 << 30


def _refused(status: int, error_type: str, message: str) -> Result:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Result(status_code=status, body=jsonx.dumps(body), request_id=ids.new_request_id())


def check_params(params: Any, catalog: ModelCatalog) -> Result | None:
    """None when the request can run; else its final (refused) result."""
    if not isinstance(params, dict):
        return _refused(400, "invalid_request_error", "params: Input should be a valid dictionary.")
    model = params.get("model")
    if model is None:
        return _refused(400, "invalid_request_error", "model: Field required.")
    if not isinstance(model, str):
        return _refused(400, "invalid_request_error", "model: Input should be a valid string.")
    problem = catalog.check(model, MESSAGES_ENDPOINT)
    if problem is not None:
        return _refused(404, "not_found_error", f"model: {problem}")
    if params.get("stream") is True:
        return _refused(400, "invalid_request_error", "stream: streaming is not supported in a Message Batch.")
    return None


def ingest_message_batch(batch: Batch, store: Store, blobs: BlobStore, catalog: ModelCatalog,
                         clock: Clock) -> bool | None:
    """Persist a Message Batch's requests. True when the batch went on (to in_progress), None when another
    ingest had started it (a stale status: nothing to do)."""
    if not store.restart_ingest(batch.id):
        return None
    key = store.file_blob_key(batch.input_file_id)
    if key is None or not blobs.exists(key):
        error = BatchError(code="invalid_request", param="input_file_id",
                           message=f"The requests of this batch ({batch.input_file_id}) are gone.")
        store.fail_validation(batch.id, [error], int(clock.now()))
        return False
    pending: list[NewRequest] = []
    finished: list[tuple[NewRequest, Result]] = []
    model: str | None = None
    idx = 0
    with blobs.open(key) as fh:
        for raw in iter_lines(fh, MAX_LINE_BYTES):
            if raw.data is None or not raw.data.strip():
                continue
            line = jsonx.loads(raw.data)
            params = line["body"]
            # Written by a freight whose create did not check nesting: that request's error, not the batch's.
            deep = nests_deeper_than(raw.data, MAX_JSON_NESTING)
            if not deep and not batch.use_cache and isinstance(params, dict) and \
                    catalog.lane_for(str(params.get("model"))) is None:
                params = {**params, NO_CACHE_KEY: True}  # cache: false on create (backends/result_cache.py)
            body = jsonx.dumps({} if deep else params)
            request = NewRequest(idx=idx, line=raw.line, custom_id=line["custom_id"], body=body)
            idx += 1
            refused = (_refused(400, "invalid_request_error", too_deep_message("This request")) if deep
                       else check_params(params, catalog))
            if refused is not None:
                finished.append((request, refused))
            else:
                pending.append(request)
                model = model or params["model"]
            if len(pending) >= INSERT_CHUNK:
                store.insert_requests(batch.id, pending)
                pending = []
            if len(finished) >= INSERT_CHUNK:
                store.insert_finished_requests(batch.id, finished)
                finished = []
    if pending:
        store.insert_requests(batch.id, pending)
    if finished:
        store.insert_finished_requests(batch.id, finished)
    return store.start_batch(batch.id, total=idx, model=model, at=int(clock.now()))
