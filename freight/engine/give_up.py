"""Ending a batch whose validation keeps failing (the policy is freight/domain/steps.py).

Runs in a worker thread. The batch ends ``failed`` with an ``internal_error`` in ``errors`` that
says what failed; a batch cancelled while it validated keeps ``cancelling``, with no requests and
that error, and the engine's next look closes it as ``cancelled`` (no file, nothing to run).
"""

from __future__ import annotations

import contextlib
import logging

from freight.domain.batches import Batch
from freight.domain.clock import Clock
from freight.domain.steps import give_up_status, step_failed_error
from freight.ports import Store

log = logging.getLogger("freight.engine")


def give_up_validation(batch: Batch, store: Store, clock: Clock, failures: int, exc: BaseException) -> bool:
    """True when the batch was ended (False: the store refused; the step is retried as before)."""
    now = clock.now()
    error = step_failed_error(failures, now >= batch.expires_at, f"{type(exc).__name__}: {exc}"[:500])
    try:
        store.fail_validation(batch.id, [error], int(now))
    except Exception:
        log.exception("giving up on a batch failed; will retry", extra={"event": "batch_give_up_failed",
                                                                         "batch_id": batch.id})
        return False
    log.error("batch validation failed %d times in a row; the batch ends %s", failures,
              give_up_status(batch.status), exc_info=exc, extra={"event": "batch_given_up", "batch_id": batch.id})
    # Its count goes with it, here in the same thread: a process that stops as soon as it sees the batch
    # ended (``freight run``) may cancel the step's task before that task could clear it.
    with contextlib.suppress(Exception):  # (a stale count is cleared by housekeeping's next look)
        store.clear_step_failures(batch.id)
    return True
