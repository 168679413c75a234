"""Batches: their rows, status changes, ingest of their requests and reading their results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.files import File
from freight.domain.quota import Quota
from freight.domain.requests import Result
from freight.ports.records import NewRequest, Page, StoredResult


class BatchStore(Protocol):
    def insert_batch(
        self, b: Batch, idempotency_key: str | None, quota: Quota | None = None, requests: int = 0
    ) -> Batch:
        """Insert, or return the batch already created under the same idempotency key.

        With a ``quota``, the insert and the check that the project stays within it (counting this
        batch's ``requests``) are one transaction; over it, ``RateLimited`` is raised.
        """
        ...

    def get_batch(self, project: str | None, batch_id: str) -> Batch | None: ...
    def find_batch(self, project: str, idempotency_key: str) -> Batch | None: ...
    def list_batches(self, project: str, *, after: str | None, limit: int) -> Page: ...
    def active_batches(self) -> list[Batch]: ...
    def set_status(
        self, batch_id: str, expected: Sequence[BatchStatus], new: BatchStatus, at: int
    ) -> Batch | None:
        """Compare-and-set the status (and its ``*_at``); None when the batch was not in ``expected``."""
        ...

    # ---- ingest ------------------------------------------------------------------------
    def clear_requests(self, batch_id: str) -> bool:
        """Drop what an interrupted validation stored; False (and nothing dropped) when the batch was
        started already: an ingest that read a stale status then has nothing to do."""
        ...
    def insert_requests(self, batch_id: str, rows: Sequence[NewRequest]) -> None: ...
    def insert_finished_requests(self, batch_id: str, rows: Sequence[tuple[NewRequest, Result]]) -> None:
        """Persist requests that already have their final result (refused at validation); counted."""
        ...

    def restart_ingest(self, batch_id: str) -> bool:
        """Drop the requests of a batch being validated and zero its counters (validation starts over);
        False (and nothing touched) when the batch was started already."""
        ...

    def start_batch(self, batch_id: str, total: int, model: str | None, at: int) -> bool:
        """Validated: set the total; validating → in_progress (a cancelling batch stays cancelling)."""
        ...

    def fail_validation(self, batch_id: str, errors: Sequence[BatchError], at: int) -> bool:
        """validating → failed with these errors (a cancelling batch keeps its status); drops requests."""
        ...

    # ---- the end -----------------------------------------------------------------------
    def results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]: ...
    def failed_results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]:
        """Like ``results``, only the failed ones (no 2xx answer): the error file's lines so far."""
        ...

    def finish_batch(
        self,
        batch_id: str,
        expected: Sequence[BatchStatus],
        new: BatchStatus,
        at: int,
        output_file: tuple[File, str] | None,
        error_file: tuple[File, str] | None,
    ) -> bool:
        """Record the output/error files and the terminal status in one transaction.

        Refused (False) while any request of the batch has no result yet, or when the batch is
        not in ``expected``.
        """
        ...
