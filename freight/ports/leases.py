"""Named leases in the store: one holder at a time across every process on it."""

from __future__ import annotations

from typing import Protocol


class StepLeases(Protocol):
    """The batch steps (validate and ingest, finalize, expiry, cancel, lane polling, housekeeping) run
    in the process that holds the ``batch-steps`` lease. Compare-and-set: a lease is taken when it is
    free, expired (``until`` < ``now``) or already held by ``holder`` (a renewal); a holder that dies
    stops renewing, and the lease moves to another process once it expires.
    """

    def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...
    def lease_holder(self, name: str, now: float) -> str | None: ...

    # Failures in a row of a batch's step (freight.domain.steps.StepPolicy gives up after so many), in the
    # store so that a process that takes the lease over goes on counting (freight/engine/step_failures.py).
    def count_step_failure(self, batch_id: str) -> int:
        """One more failure of the batch's step; the failures in a row, this one included."""
        ...

    def clear_step_failures(self, batch_id: str) -> None: ...
    def step_failure_counts(self) -> dict[str, int]: ...
