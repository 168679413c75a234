"""The engine loop: advance every active batch, and keep each backend busy with claimed work.

Two kinds of task run on the event loop:

- ``tick`` (on every wake-up, at least every ``poll_interval_s``) looks at each active batch and
  moves it along its status machine: ingest a validating batch, finalize a finished one, close
  out an expired or cancelled one;
- one dispatcher per backend claims chunks of requests (round-robin across projects, then across
  each project's batches, so one tenant or one big batch cannot starve the others) and runs up to
  ``backend.max_concurrency`` chunks at once.

Every store call runs in a worker thread. Results are stored only by the attempt that holds the
claim, so a chunk that outlives its lease (or its batch's deadline) can never overwrite or
double a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from freight.domain import ids
from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import Clock
from freight.domain.message_batches import MESSAGES_ENDPOINT
from freight.domain.requests import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    NEVER_RAN_MESSAGES,
    ClaimedRequest,
    Failure,
    Result,
)
from freight.domain.retry import RetryPolicy, is_transient_status
from freight.engine.finalize import finalize_batch
from freight.engine.ingest import ingest_batch
from freight.engine.ingest_messages import ingest_message_batch
from freight.engine.lanes import LaneRunner
from freight.engine.step_lease import StepHolder
from freight.ports import Backend, BlobStore, Completion, Retry, StepLeases, Store
from freight.services.catalog import ModelCatalog
from freight.wire import jsonx
from freight.wire.batch_input import InputLimits

log = logging.getLogger("freight.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class EngineSettings:
    #: How long a claim is valid without renewal (renewed every third of it while running).
    lease_s: float = 120.0
    #: Longest sleep between two looks at the store when nothing wakes the engine.
    poll_interval_s: float = 0.2
    #: How long cancel and expiry wait for in-flight requests before abandoning them.
    drain_timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    input_limits: InputLimits = field(default_factory=InputLimits)
    #: How often deleted and expired files have their bytes removed.
    housekeeping_interval_s: float = 60.0
    #: Storing a chunk's results is retried this many times (a locked or full store), with a backoff
    #: from ``store_retry_base_s`` doubling up to ``store_retry_max_s``, before the results are given
    #: up (the requests then run again once their lease expires).
    store_retry_attempts: int = 8
    store_retry_base_s: float = 0.05
    store_retry_max_s: float = 2.0
    #: A batch step (validate, finalize, close) that failed is tried again after a backoff that
    #: doubles from ``poll_interval_s`` up to this.
    step_retry_max_s: float = 30.0
    #: How long the ``batch-steps`` lease (``StepLeases``) outlives its holder's last renewal.
    step_lease_s: float = 15.0


class FairTurns:
    """Whose turn it is to have a chunk claimed: projects in turn, and each project's batches in turn.

    So a project with many (or huge) batches gets one chunk in P while P projects have work, and
    never holds up the others for longer than that; within a project, batches share the same way.
    """

    def __init__(self) -> None:
        self._last_project: str | None = None
        self._last_batch: dict[str, str] = {}

    def order(self, batches: Sequence[Batch]) -> list[Batch]:
        """Every batch, in the order to try them: the next project's batches first, from its next batch."""
        by_project: dict[str, list[Batch]] = {}
        for batch in batches:
            by_project.setdefault(batch.project, []).append(batch)
        projects = sorted(by_project)
        start = next((i for i, p in enumerate(projects) if self._last_project is None or p > self._last_project), 0)
        ordered: list[Batch] = []
        for project in projects[start:] + projects[:start]:
            own = by_project[project]
            last = self._last_batch.get(project)
            after = next((i + 1 for i, b in enumerate(own) if b.id == last), 0)
            ordered.extend(own[after:] + own[:after])
        return ordered

    def served(self, batch: Batch) -> None:
        self._last_project = batch.project
        self._last_batch[batch.project] = batch.id


class Engine:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        catalog: ModelCatalog,
        clock: Clock,
        settings: EngineSettings | None = None,
        *,
        owner: str | None = None,
        random: Callable[[], float] = _random.random,
        steps: StepLeases | None = None,
    ):
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.clock = clock
        self.settings = settings or EngineSettings()
        self.owner = owner or ids.new_attempt_id()
        self.steps = StepHolder(steps, self.owner, clock, self.settings.step_lease_s)
        self._random = random
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._work: dict[int, asyncio.Event] = {}
        self._runnable: dict[int, list[Batch]] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: int = 0
        self._stopping = False
        self._next_housekeeping = 0.0
        #: Batches whose model is forwarded to a provider's batch API (engine/lanes.py).
        self.lanes = LaneRunner(store, blobs, catalog, clock, random=random)
        #: batch id -> (consecutive failures of its steps, monotonic time before which not to retry)
        self._failing: dict[str, tuple[int, float]] = {}

    # ---- waking ------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the engine to look at the store now (safe to call from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_now()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_now)

    def _wake_now(self) -> None:
        self._wake.set()
        for event in self._work.values():
            event.set()

    # ---- main loop ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None, until: Callable[[], bool] | None = None) -> None:
        """Run until ``stop`` is set or ``until()`` is true after a tick."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        # Backends start lazily, when their first work arrives (see _dispatch): a model is not loaded
        # into memory by a process that never runs a request on it.
        for lane in self.catalog.lanes:
            await lane.start()
        dispatchers = [asyncio.create_task(self._dispatch(b)) for b in self.catalog.backends]
        stop_wait = asyncio.create_task(stop.wait()) if stop is not None else None
        try:
            while stop is None or not stop.is_set():
                self._wake.clear()
                try:
                    await self.tick()
                except Exception:
                    self.errors += 1
                    log.exception("engine tick failed; retrying", extra={"event": "tick_failed"})
                if until is not None and until():
                    break
                waits: list[asyncio.Task[object]] = [asyncio.create_task(self._wake.wait())]
                if stop_wait is not None:
                    waits.append(stop_wait)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waits, timeout=self.settings.poll_interval_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                waits[0].cancel()
        finally:
            self._stopping = True
            if stop_wait is not None:
                stop_wait.cancel()
            for task in dispatchers:
                task.cancel()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*dispatchers, *tasks, return_exceptions=True)
            for lane in self.catalog.lanes:
                await lane.close()
            await self.steps.release()

    async def tick(self) -> None:
        holder = await self.steps.held()  # the batch steps run in one process at a time
        now = self.clock.now()
        if holder and now >= self._next_housekeeping:
            self._next_housekeeping = now + self.settings.housekeeping_interval_s
            await asyncio.to_thread(self.purge_files)
        batches = await asyncio.to_thread(self.store.active_batches)
        runnable: dict[int, list[Batch]] = {}
        now = self.clock.now()
        for batch in batches:
            if not holder:  # another process runs the steps: this one runs requests of batches in progress
                if batch.status is BatchStatus.IN_PROGRESS and not self.lanes.handles(batch) and now < batch.expires_at:
                    self._add_runnable(runnable, batch)
                continue
            if batch.id in self._busy:
                if batch.status is BatchStatus.IN_PROGRESS:
                    self._add_runnable(runnable, batch)
                continue
            failing = self._failing.get(batch.id)
            if failing is not None and time.monotonic() < failing[1]:
                if batch.status is BatchStatus.IN_PROGRESS:
                    self._add_runnable(runnable, batch)  # its requests still run; only the step waits
                continue
            if batch.status is BatchStatus.VALIDATING:
                self._spawn(batch.id, self._ingest(batch))
            elif batch.status is BatchStatus.IN_PROGRESS and self.lanes.handles(batch):
                counts = batch.request_counts
                if counts.completed + counts.failed >= counts.total:
                    self._spawn(batch.id, self._finish(batch))
                else:  # forwarded to a provider's batch API: one durable step at a time
                    self._spawn(batch.id, self.lanes.advance(batch), wake=False)
            elif batch.status is BatchStatus.IN_PROGRESS:
                if now >= batch.expires_at:
                    self._spawn(batch.id, self._close(batch, BatchStatus.EXPIRED, batch.expires_at))
                    continue
                self._add_runnable(runnable, batch)
                counts = batch.request_counts
                if counts.completed + counts.failed >= counts.total:
                    self._spawn(batch.id, self._finish(batch))
            elif batch.status is BatchStatus.FINALIZING:
                self._spawn(batch.id, self._finish(batch))
            elif batch.status is BatchStatus.CANCELLING:
                if batch.in_progress_at is None and batch.request_counts.total == 0 and not batch.errors:
                    # Cancelled while validating and never validated (e.g. a crash in between):
                    # persist its requests first, so that each gets its batch_cancelled line.
                    self._spawn(batch.id, self._ingest(batch))
                elif self.lanes.handles(batch):
                    self._spawn(batch.id, self.lanes.advance(batch), wake=False)
                else:
                    self._spawn(batch.id, self._close(batch, BatchStatus.CANCELLED, batch.cancelling_at or now))
        self._runnable = runnable
        for event in self._work.values():
            event.set()

    def _add_runnable(self, runnable: dict[int, list[Batch]], batch: Batch) -> None:
        backend = self.catalog.backend_for(batch.model) if batch.model else None
        if backend is not None:
            runnable.setdefault(id(backend), []).append(batch)

    def _spawn(self, batch_id: str, coro: object, *, wake: bool = True) -> None:
        self._busy.add(batch_id)

        async def guarded() -> None:
            try:
                await coro  # type: ignore[misc]
                self._failing.pop(batch_id, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                failures = self._failing.get(batch_id, (0, 0.0))[0] + 1
                delay = min(self.settings.step_retry_max_s, self.settings.poll_interval_s * 2 ** (failures - 1))
                self._failing[batch_id] = (failures, time.monotonic() + delay)
                log.exception("batch step failed (%d in a row); will retry in %.1f s", failures, delay,
                              extra={"event": "batch_step_failed", "batch_id": batch_id})
            finally:
                self._busy.discard(batch_id)
                if wake:
                    self.wake()

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- housekeeping ------------------------------------------------------------------
    def purge_files(self) -> int:
        """Remove the bytes of deleted and expired files that no active batch reads any more."""
        purged = 0
        while batch := self.store.purgeable_files(self.clock.now()):
            for _, key in batch:
                self.blobs.delete(key)
            self.store.mark_purged([file_id for file_id, _ in batch])
            purged += len(batch)
        return purged

    def sweep_orphan_blobs(self) -> int:
        """Remove blobs no file refers to (finalizing or uploading when a process died).

        Only safe while no upload or finalize is in flight: call it before the engine and the API
        start, with the data dir's lock held.
        """
        referenced = self.store.blob_keys()
        orphans = [key for key in self.blobs.keys() if key not in referenced]
        for key in orphans:
            self.blobs.delete(key)
        return len(orphans)

    # ---- batch steps -------------------------------------------------------------------
    async def _ingest(self, batch: Batch) -> None:
        if batch.endpoint == MESSAGES_ENDPOINT and await asyncio.to_thread(self.store.is_message_batch, batch.id):
            # A Message Batch: a bad request is that request's error, not the batch's (ingest_messages.py).
            started = await asyncio.to_thread(
                ingest_message_batch, batch, self.store, self.blobs, self.catalog, self.clock)
        else:
            started = await asyncio.to_thread(
                ingest_batch, batch, self.store, self.blobs, self.catalog, self.settings.input_limits, self.clock
            )
        log.info("batch validated", extra={"event": "batch_validated", "batch_id": batch.id, "ok": started})

    async def _finish(self, batch: Batch) -> None:
        pending, running = await asyncio.to_thread(self.store.open_counts, batch.id)
        if pending or running:
            return
        if batch.status is BatchStatus.IN_PROGRESS:
            moved = await asyncio.to_thread(
                self.store.set_status, batch.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING,
                int(self.clock.now()))
            if moved is None:
                return
        await asyncio.to_thread(
            finalize_batch, batch, self.store, self.blobs, self.clock, [BatchStatus.FINALIZING], BatchStatus.COMPLETED
        )
        log.info("batch completed", extra={"event": "batch_completed", "batch_id": batch.id})

    async def _close(self, batch: Batch, final: BatchStatus, since: float) -> None:
        """Expiry or cancellation: nothing new starts; in-flight work drains, then the files."""
        code = BATCH_EXPIRED if final is BatchStatus.EXPIRED else BATCH_CANCELLED
        never_ran = Result.never_ran(code, NEVER_RAN_MESSAGES[code])
        await asyncio.to_thread(self.store.close_unstarted, batch.id, never_ran, False)
        pending, running = await asyncio.to_thread(self.store.open_counts, batch.id)
        if running and self.clock.now() < since + self.settings.drain_timeout_s:
            return  # let in-flight requests finish; look again on the next tick
        if pending or running:
            # Running past the drain timeout (abandoned), or put back for a retry since we looked.
            abandoned = Result.never_ran(
                code, NEVER_RAN_MESSAGES[code] + " It had not finished when the batch closed and its result, if "
                "any, was discarded.")
            await asyncio.to_thread(self.store.close_unstarted, batch.id, abandoned, True)
        done = await asyncio.to_thread(
            finalize_batch, batch, self.store, self.blobs, self.clock, [batch.status], final)
        if done:
            log.info("batch closed", extra={"event": f"batch_{final}", "batch_id": batch.id})

    # ---- execution ---------------------------------------------------------------------
    async def _dispatch(self, backend: Backend) -> None:
        key = id(backend)
        work = self._work.setdefault(key, asyncio.Event())
        slots = asyncio.Semaphore(max(1, backend.max_concurrency))
        turns = FairTurns()
        started = False
        start_failures = 0
        while not self._stopping:
            await slots.acquire()
            got: tuple[Batch, list[ClaimedRequest]] | None = None
            candidates = self._runnable.get(key, [])
            if candidates and not started:
                # Load the model before claiming anything, so that its load time does not eat the leases.
                try:
                    await backend.start()
                    started = True
                except Exception:
                    self.errors += 1
                    start_failures += 1
                    log.exception("backend failed to start; trying again", extra={"event": "backend_start_failed"})
                    slots.release()
                    await asyncio.sleep(min(60.0, self.settings.poll_interval_s * 2 ** min(start_failures, 10)))
                    continue
            try:
                for batch in turns.order(candidates):
                    claimed = await asyncio.to_thread(
                        self.store.claim, batch.id, self.owner, self.clock.now(), self.settings.lease_s,
                        backend.chunk_size, self.settings.retry.max_attempts)
                    if claimed:
                        got = (batch, claimed)
                        turns.served(batch)
                        break
            except Exception:
                self.errors += 1
                log.exception("claim failed", extra={"event": "claim_failed"})
            if got is None:
                slots.release()
                work.clear()
                await self._sleep_until(work, self.settings.poll_interval_s)
                continue
            task = asyncio.create_task(self._run_chunk(backend, *got))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                slots.release()

            task.add_done_callback(done)

    async def _sleep_until(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait for ``event`` or ``timeout_s``. (Not ``wait_for``: on Python 3.11 it can swallow a
        cancellation that arrives as the event fires, and the dispatcher would never stop.)"""
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout_s)
        finally:
            waiter.cancel()

    async def _renew(self, batch_id: str, attempt_ids: list[str]) -> None:
        every = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.store.renew, batch_id, attempt_ids,
                                        self.clock.now() + self.settings.lease_s)
            except Exception:
                # Keep trying: a lease that runs out only costs a second run of these requests.
                log.warning("renewing leases failed", exc_info=True, extra={"event": "renew_failed",
                                                                             "batch_id": batch_id})

    async def _store_with_retries(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """A store write of results held only in memory: retried through a locked or full store."""
        delay = self.settings.store_retry_base_s
        attempts = max(1, self.settings.store_retry_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception:
                if attempt == attempts or self._stopping:
                    raise
                log.warning("%s failed (attempt %d of %d); retrying in %.2f s", what, attempt, attempts, delay,
                            exc_info=True, extra={"event": "store_retry"})
                await asyncio.sleep(delay)
                delay = min(self.settings.store_retry_max_s, delay * 2)
        raise AssertionError("unreachable")

    async def _run_chunk(self, backend: Backend, batch: Batch, claimed: list[ClaimedRequest]) -> None:
        renewer = asyncio.create_task(self._renew(batch.id, [c.attempt_id for c in claimed]))
        try:
            bodies = [jsonx.loads(c.body) for c in claimed]
            try:
                results: Sequence[Result | Failure] = await backend.execute(batch.endpoint, bodies)
                if len(results) != len(bodies):
                    raise RuntimeError(f"backend returned {len(results)} results for {len(bodies)} requests")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backend call failed", exc_info=True, extra={"event": "backend_failed",
                                                                          "batch_id": batch.id})
                results = [Failure("backend_error", f"{type(exc).__name__}: {exc}")] * len(bodies)
            completions, retries = self._decide(claimed, results)
            # Retrying is safe: each write is one transaction, and fencing makes a repeat a no-op.
            if completions:
                await self._store_with_retries("storing results", self.store.complete, batch.id, completions)
            if retries:
                await self._store_with_retries("scheduling retries", self.store.retry_later, batch.id, retries)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The results are lost with this chunk, but the leases expire and the requests run again.
            self.errors += 1
            log.exception("storing results failed", extra={"event": "store_failed", "batch_id": batch.id})
        finally:
            renewer.cancel()
        self.wake()

    def _decide(
        self, claimed: Sequence[ClaimedRequest], results: Sequence[Result | Failure]
    ) -> tuple[list[Completion], list[Retry]]:
        completions: list[Completion] = []
        retries: list[Retry] = []
        now = self.clock.now()
        for request, result in zip(claimed, results, strict=True):
            transient = isinstance(result, Failure) or (
                result.status_code is not None and is_transient_status(result.status_code))
            if not transient:
                assert isinstance(result, Result)
                completions.append(Completion(request.idx, request.attempt_id, result))
                continue
            decision = self.settings.retry.decide(request.attempts, self._random)
            why = (f"{result.code}: {result.message}" if isinstance(result, Failure)
                   else f"HTTP {result.status_code}")
            if decision is not None:
                retries.append(Retry(request.idx, request.attempt_id, now + decision.delay_s, why))
                continue
            if isinstance(result, Failure):
                final = Result.never_ran(
                    result.code, f"{result.message} (gave up after {request.attempts} attempts)")
            else:
                final = result
            completions.append(Completion(request.idx, request.attempt_id, final))
        return completions, retries
