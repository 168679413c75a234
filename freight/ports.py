"""The seams between freight's core and its adapters: the only interfaces there are.

- ``Store``: batches, files' metadata and every request with its one final result.
- ``BlobStore``: the bytes of files (inputs, outputs, errors).
- ``Backend``: a way of executing requests (a local model, an HTTP endpoint, a provider's lane).

Store methods are synchronous and short; the async engine calls them from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.files import File
from freight.domain.requests import ClaimedRequest, Failure, Result


@dataclass(frozen=True)
class NewRequest:
    idx: int
    line: int
    custom_id: str
    body: bytes


@dataclass(frozen=True)
class Completion:
    idx: int
    attempt_id: str
    result: Result


@dataclass(frozen=True)
class Retry:
    idx: int
    attempt_id: str
    not_before: float
    last_error: str


@dataclass(frozen=True)
class StoredResult:
    idx: int
    custom_id: str
    result: Result


@dataclass(frozen=True)
class Page:
    items: list[Any]
    has_more: bool


class Store(Protocol):
    # ---- files -------------------------------------------------------------------------
    def insert_file(self, f: File, blob_key: str) -> None: ...
    def get_file(self, project: str, file_id: str) -> File | None: ...
    def file_blob_key(self, file_id: str) -> str | None: ...
    def list_files(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page: ...
    def delete_file(self, project: str, file_id: str) -> bool: ...

    # ---- batches -----------------------------------------------------------------------
    def insert_batch(self, b: Batch, idempotency_key: str | None) -> Batch:
        """Insert, or return the batch already created under the same idempotency key."""
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
    def clear_requests(self, batch_id: str) -> None: ...
    def insert_requests(self, batch_id: str, rows: Sequence[NewRequest]) -> None: ...
    def start_batch(self, batch_id: str, total: int, model: str | None, at: int) -> bool:
        """Validated: set the total; validating → in_progress (a cancelling batch stays cancelling)."""
        ...

    def fail_validation(self, batch_id: str, errors: Sequence[BatchError], at: int) -> bool:
        """validating → failed with these errors (a cancelling batch keeps its status); drops requests."""
        ...

    # ---- execution ---------------------------------------------------------------------
    def claim(
        self, batch_id: str, owner: str, now: float, lease_s: float, limit: int, max_attempts: int
    ) -> list[ClaimedRequest]:
        """Lease up to ``limit`` runnable requests of an in-progress batch, each with a fresh attempt id.

        Runnable: pending and past its backoff, or running under an expired lease. A request whose
        lease expired after its last allowed attempt is closed with a ``worker_lost`` error instead.
        """
        ...

    def renew(self, batch_id: str, attempt_ids: Sequence[str], until: float) -> int: ...
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

    def results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]: ...
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

    def release_leases(self) -> int:
        """Return every running request to pending (engine start-up on a single-node store)."""
        ...

    def purgeable_files(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        """(file id, blob key) of files deleted or expired that no active batch still reads."""
        ...

    def mark_purged(self, file_ids: Sequence[str]) -> None: ...
    def blob_keys(self) -> set[str]:
        """Every blob key a file row still refers to."""
        ...

    def close(self) -> None: ...


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...
    @property
    def size(self) -> int: ...


class BlobStore(Protocol):
    def writer(self, key: str) -> BlobWriter: ...
    def open(self, key: str) -> IO[bytes]: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def keys(self) -> list[str]: ...


@dataclass(frozen=True)
class ModelInfo:
    id: str
    endpoints: frozenset[str]
    owned_by: str = "freight"


class Backend(Protocol):
    """Executes requests for the models it serves.

    ``execute`` gets the parsed bodies of requests claimed together (all for one model and
    endpoint) and returns one ``Result`` (a response: 2xx succeeded, 4xx refused, 429/5xx
    retried) or ``Failure`` (no response: retried) per request, in order.
    """

    def models(self) -> Sequence[ModelInfo]: ...

    #: How many requests the engine claims for one ``execute`` call.
    chunk_size: int
    #: How many ``execute`` calls may run at once.
    max_concurrency: int

    async def start(self) -> None: ...
    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]: ...
    async def close(self) -> None: ...
