"""The request queue: claims under leases, fenced by attempt ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from freight.domain.requests import ClaimedRequest, Result
from freight.ports.records import Completion, Retry


class RequestQueue(Protocol):
    def claim(
        self, batch_id: str, owner: str, now: float, lease_s: float, limit: int, max_attempts: int
    ) -> list[ClaimedRequest]:
        """Lease up to ``limit`` runnable requests of an in-progress batch, each with a fresh attempt id.

        Runnable: pending and past its backoff, or running under an expired lease. A request whose
        lease expired after its last allowed attempt is closed with a ``worker_lost`` error instead.
        """
        ...

    def claim_runnable(
        self, models: Sequence[str], owner: str, now: float, lease_s: float, limit: int, max_attempts: int,
        batches: Sequence[str] | None = None,
    ) -> list[ClaimedRequest]:
        """As ``claim``, across every in-progress batch of these models in one query (oldest batch
        first, then input order); concurrent callers never get the same request.

        With ``batches``: only those batches, in that order (the scheduling policy's): the first one's
        runnable requests, then the next one's, up to ``limit`` in all, still in one query."""
        ...

    def renew(self, batch_id: str, leases: Sequence[tuple[int, str]], until: float) -> int:
        """Extend the leases given as (idx, attempt id) until ``until``, each only while that attempt
        still holds the claim. Returns how many were extended."""
        ...

    def complete(self, batch_id: str, items: Sequence[Completion]) -> int:
        """Store results, each only if its attempt still holds the claim (fencing). Returns how many."""
        ...

    def retry_later(self, batch_id: str, items: Sequence[Retry]) -> int: ...
    def close_unstarted(self, batch_id: str, result: Result, include_running: bool) -> int:
        """Give every request that has no result yet this never-ran result."""
        ...

    def open_counts(self, batch_id: str) -> tuple[int, int]:
        """(pending, running) requests of a batch."""
        ...

    def release_leases(self, owner: str | None = None) -> int:
        """Return running requests to pending: those leased by ``owner``, or every one when None.

        Every one is only right when no other process can hold a lease (SQLite under the data
        dir's lock); a fleet on a shared store lets expired leases be claimed again instead.
        """
        ...
