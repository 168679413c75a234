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
