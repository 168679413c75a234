"""The seams between freight's core and its adapters: the only interfaces there are.

- ``Store``: batches, files' metadata and every request with its one final result.
- ``BlobStore``: the bytes of files (inputs, outputs, errors).
- ``Backend``: a way of executing requests (a local model, an HTTP endpoint, a provider's lane).

Store methods are synchronous and short; the async engine calls them from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from freight.domain.batches import Batch, BatchError, BatchStatus
from freight.domain.files import File
from freight.domain.keys import ApiKey
from freight.domain.lanes import LaneLimits, LaneOutcome, LaneSub, UpstreamProgress
from freight.domain.message_batches import EndedCounts, MessageBatch
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
class Quota:
    """A project's limits on work in the system (None: no limit)."""

    #: Batches not yet in a terminal state.
    max_active_batches: int | None = None
    #: Requests of active batches without a result yet (a validating batch counts its input's lines).
    max_queued_requests: int | None = None


@dataclass(frozen=True)
class Page:
    items: list[Any]
    has_more: bool


class Store(Protocol):
    # ---- files -------------------------------------------------------------------------
    def insert_file(self, f: File, blob_key: str, idempotency_key: str | None = None) -> File:
        """Insert, or return the file already created under the same idempotency key (then the
        caller's ``blob_key`` is not referenced and its bytes may be deleted)."""
        ...

    def find_file(self, project: str, idempotency_key: str) -> File | None: ...
    def get_file(self, project: str, file_id: str) -> File | None: ...
    def file_blob_key(self, file_id: str) -> str | None: ...
    def list_files(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page: ...
    def delete_file(self, project: str, file_id: str) -> bool: ...

    # ---- batches -----------------------------------------------------------------------
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

    # ---- API keys ----------------------------------------------------------------------
    def insert_api_key(self, key: ApiKey, secret_hash: str) -> None: ...
    def get_api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key (revoked ones too) and the sha256 of its secret."""
        ...

    def list_api_keys(self) -> list[ApiKey]: ...
    def revoke_api_key(self, key_id: str, at: int) -> bool: ...
    def has_api_keys(self) -> bool:
        """Whether any key that is not revoked exists."""
        ...

    # ---- Anthropic Message Batches (freight/services/message_batches.py) ------------------
    def insert_message_batch(
        self, f: File, blob_key: str, b: Batch, requests: int, quota: Quota | None = None
    ) -> None:
        """Record a Message Batch's input file, its batch and its Message Batch row in one transaction
        (with the project's ``quota`` checked in it, as ``insert_batch`` does)."""
        ...

    def is_message_batch(self, batch_id: str) -> bool: ...
    def get_message_batch(self, project: str, batch_id: str) -> MessageBatch | None: ...
    def list_message_batches(
        self, project: str, *, after: str | None, before: str | None, limit: int
    ) -> Page:
        """Message Batches, newest first: older than ``after``, or the ``limit`` just newer than ``before``."""
        ...

    def settle_message_batch(self, batch_id: str) -> EndedCounts | None:
        """Count a terminal batch's results by kind (once; kept). None while it is not terminal."""
        ...

    def delete_message_batch(self, project: str, batch_id: str) -> bool:
        """Delete a terminal Message Batch: its requests, batch row and files. False if none or not ended."""
        ...

    def restart_ingest(self, batch_id: str) -> None:
        """Drop the requests of a batch being validated and zero its counters (validation starts over)."""
        ...

    def insert_finished_requests(self, batch_id: str, rows: Sequence[tuple[NewRequest, Result]]) -> None:
        """Persist requests that already have their final result (refused at validation); counted."""
        ...

    # ---- batch lanes (freight/engine/lanes.py) -----------------------------------------
    def lane_unassigned(self, batch_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes, int]]:
        """Pending requests of a batch that no live sub holds, in input order after ``after_idx``:
        (idx, body, how many subs held it before)."""
        ...

    def lane_plan(self, sub: LaneSub, idxs: Sequence[int]) -> None:
        """Record a planned sub and the requests it holds, in one transaction."""
        ...

    def lane_subs(self, batch_id: str, live_only: bool = True) -> list[LaneSub]: ...
    def lane_bodies(self, sub_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes]]:
        """The requests of a sub, in input order."""
        ...

    def lane_items(self, sub_id: str) -> list[int]:
        """The request indexes a sub holds, in input order."""
        ...

    def lane_update(self, sub_id: str, **fields: Any) -> None:
        """Set columns of a sub (state, upload_id, upstream_id, create_sent_at, upstream_status,
        completed, failed, cancel_sent)."""
        ...

    def lane_finish(self, sub_id: str, batch_id: str, results: Sequence[tuple[int, Result]]) -> int:
        """Store these results (each only if its request has none yet) and mark the sub done, in one
        transaction. Requests of the sub without a result here go back to the pool. Returns how many
        results were stored."""
        ...

    def lane_progress(self, batch_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per batch: (completed, failed) that live subs' upstream batches report, not yet downloaded."""
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


#: ``Failure.code`` for a request that a backend did not start because its call was withdrawn.
WITHDRAWN = "withdrawn"
T = TypeVar("T")


class Withdrawn(Exception):
    """Raised by ``Withdrawal.before``: the wait was given up, the request is not to start."""


class Withdrawal:
    """Tells a backend that the requests of one ``execute`` call which have not started should not start.

    Set by the engine when their batch is cancelled or expires (and, later, paused). Requests still
    waiting inside the backend (a queue for a decoding slot, rate-limit admission) then end at once as
    ``Failure(WITHDRAWN, ...)``; the engine puts them back (fenced by their attempt id) and the batch's
    close records them as cancelled or expired. Requests already running may finish. ``set`` is called
    on the event loop; ``is_set`` may be read from any thread; callbacks run where ``set`` runs.
    """

    def __init__(self) -> None:
        self._reason: str | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def reason(self) -> str | None:
        return self._reason

    def is_set(self) -> bool:
        return self._reason is not None

    def set(self, reason: str) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when this is set (at once when it already is)."""
        with self._lock:
            if self._reason is None:
                self._callbacks.append(callback)
                return
        callback()

    def failure(self) -> Failure:
        return Failure(WITHDRAWN, f"not started: the batch was {self._reason or 'withdrawn'}")

    async def before(self, wait: Awaitable[T]) -> T:
        """Await ``wait`` (a queue, a slot, an admission) unless this is set first: then cancel it, raise
        ``Withdrawn``. ``wait`` must be safe to cancel."""
        task = asyncio.ensure_future(wait)
        if self.is_set():
            task.cancel()
            raise Withdrawn(self._reason)
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not gone.done():
                gone.set_result(None)

        def from_anywhere() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(wake)

        self.add_callback(from_anywhere)
        try:
            waiters: list[asyncio.Future[Any]] = [task, gone]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Withdrawn(self._reason)


#: The ``Withdrawal`` of the ``execute`` call being made (set by the engine around each call; None
#: for direct calls such as the synchronous API's). A context variable, so it reaches the tasks and
#: worker threads a backend starts, through wrappers such as the Messages adapter.
current_withdrawal: contextvars.ContextVar[Withdrawal | None] = contextvars.ContextVar(
    "freight_withdrawal", default=None)


class Backend(Protocol):
    """Executes requests for the models it serves.

    ``execute`` gets the parsed bodies of requests claimed together (all for one model and
    endpoint) and returns one ``Result`` (a response: 2xx succeeded, 4xx refused, 429/5xx
    retried) or ``Failure`` (no response: retried) per request, in order. A backend where requests
    wait before they start should watch ``current_withdrawal.get()`` (see ``Withdrawal``).
    """

    def models(self) -> Sequence[ModelInfo]: ...

    #: How many requests the engine claims for one ``execute`` call.
    chunk_size: int
    #: How many ``execute`` calls may run at once.
    max_concurrency: int

    async def start(self) -> None: ...
    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]: ...
    async def close(self) -> None: ...


class BatchLane(Protocol):
    """A provider's own batch API (OpenAI Files + Batches, Anthropic Message Batches) for some models.

    Not a ``Backend``: a lane takes whole sets of requests and answers hours later, so the engine's
    ``LaneRunner`` (freight/engine/lanes.py) drives it, one durable step at a time. A lane holds no
    state of its own beyond a connection pool; every id it returns is recorded by the runner before
    the next call. Requests come as freight's own batch lines (``{"custom_id", "method", "url",
    "body"}``) whose ``custom_id`` is the upstream key (freight.domain.lanes.upstream_key); outcomes
    are returned by that key. Errors (connection, 5xx, 429) are raised and retried by the runner.
    """

    limits: LaneLimits
    #: First and longest interval between two polls of one upstream batch (the runner backs off).
    poll_interval_s: float
    max_poll_interval_s: float
    #: How many times a request may be submitted upstream (resubmission of expired/retryable ones).
    max_rounds: int
    #: After a cancel (or freight's window running out): how long to wait for upstream batches to end.
    cancel_timeout_s: float

    def models(self) -> Sequence[ModelInfo]: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        """Put the requests upstream if the protocol has a separate step for it (OpenAI: a file;
        returns its id); None when the create carries them (Anthropic)."""
        ...

    async def find_upload(self, sub_id: str) -> str | None:
        """After a crash during ``upload``: the upload that did arrive, if any."""
        ...

    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        """Create the upstream batch; its id. ``LaneRefused`` when the upstream will never take it."""
        ...

    async def find_created(self, sub_id: str, upload_id: str | None, sent_at: float, requests: int) -> str | None:
        """After a crash during ``create``: the upstream batch that was created, if any."""
        ...

    async def poll(self, upstream_id: str) -> UpstreamProgress: ...
    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        """Every line the ended upstream batch has for its requests (some may be missing)."""
        ...

    async def cancel(self, upstream_id: str) -> None: ...
