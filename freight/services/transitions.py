"""The log line of a batch transition: one per change of a batch's status, wherever it is made.

It names the batch, its project, the old and the new status and the request counts, in the
message (readable in the text format) and as fields (for ``--log-format json``).
"""

from __future__ import annotations

import logging
from typing import Any

from freight.domain.batches import Batch, BatchStatus

log = logging.getLogger("freight.batches")


def log_transition(old: BatchStatus | None, batch: Batch, **fields: Any) -> None:
    """One line for ``batch`` having moved from ``old`` (None: just created) to its current status."""
    counts = batch.request_counts
    new = batch.status
    detail = ""
    if new is BatchStatus.FAILED:
        detail = f"; {len(batch.errors or [])} validation error(s)"
    log.info(
        "batch %s %s -> %s (project %s; %d total, %d completed, %d failed%s)",
        batch.id, old if old is not None else "(new)", new, batch.project, counts.total, counts.completed,
        counts.failed, detail,
        extra={"event": "batch_transition", "batch_id": batch.id, "project": batch.project,
               "old_status": str(old) if old is not None else None, "new_status": str(new), "total": counts.total,
               "completed": counts.completed, "failed": counts.failed,
               "validation_errors": len(batch.errors or []), **fields},
    )
