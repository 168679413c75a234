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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
from freight.domain.steps import StepPolicy
from freight.engine.decide import decide
from freight.engine.finalize import finalize_batch
from freight.engine.give_up import give_up_validation
from freight.engine.housekeeping import Housekeeping, give_back
from freight.engine.ingest import ingest_batch
from freight.engine.ingest_messages import ingest_message_batch
from freight.engine.lanes import LaneRunner
from freight.engine.repeats import RepeatedFailures
from freight.engine.settings import EngineSettings
from freight.engine.starts import BackendStarts
from freight.engine.step_failures import StepFailures
from freight.engine.step_lease import StepHolder
from freight.engine.turns import FairTurns, claim_in_turn
from freight.engine.withdrawals import Withdrawals
from freight.ports import Backend, BlobStore, Completion, Retry, StepLeases, Store, on_behalf_of
from freight.services.catalog import ModelCatalog
from freight.services.files import purge_files, sweep_orphan_blobs
from freight.services.transitions import log_transition
from freight.wire import jsonx

log = logging.getLogger("freight.engine")
T = TypeVar("T")


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
        self._dry: set[int] = set()  # backends whose last claim found nothing: their finished chunks wake the engine
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: int = 0
        self._stopping = False
        #: Batches whose model is forwarded to a provider's batch API (engine/lanes.py).
        self.lanes = LaneRunner(store, blobs, catalog, clock, random=random)
        #: Consecutive failures of each batch's steps (counted in the store) and their backoff.
        self.failing = StepFailures(store)
        self.repeats = RepeatedFailures(log)
        self.housekeeping = Housekeeping(store, blobs, clock, self.settings, self.repeats, self.failing)
        #: The batches the last tick of the batch-steps holder found active (``freight run`` stops on it).
        self.active_ids: set[str] = set()
        s = self.settings
        self._steps = StepPolicy(s.step_max_tries, s.step_tries_past_window,
                                 min(s.poll_interval_s, s.step_retry_max_s), s.step_retry_max_s)
        self._withdrawals = Withdrawals()  # of chunks in flight: set when their batch is cancelled or expires
        self._turns: dict[int, FairTurns] = {}  # by backend: the scheduling policy applied (engine/turns.py)
        self.starts = BackendStarts(catalog)  # model loads, shared; an ingest warms its batch's model

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
        self.starts.reopen()
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
                    self.repeats.ok("tick_failed")
                except Exception as exc:
                    self.errors += 1
                    self.repeats.failed("tick_failed", "engine tick failed; retrying", exc)
                if until is not None and until():
                    break
                waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._wake.wait())]
                if stop_wait is not None:
                    waits.append(stop_wait)
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
            await self.starts.close()
            for lane in self.catalog.lanes:
                await lane.close()
            for turns in self._turns.values():
                await asyncio.to_thread(turns.save)  # the model time used since the last save
            await self.steps.release()
            await asyncio.to_thread(give_back, self.store, self.owner)  # (its chunks were cancelled above)

    async def tick(self) -> None:
        holder = await self.steps.held()  # the batch steps run in one process at a time
        now = self.clock.now()
        if not holder:
            # Another process runs the batch steps: this one only runs requests of batches in progress.
            runnable: dict[int, list[Batch]] = {}
            for batch in await asyncio.to_thread(self.store.active_batches):
                self._withdrawals.look(batch, now)  # a cancel or expiry reaches this process's chunks too
                if (batch.status is BatchStatus.IN_PROGRESS and not self.lanes.handles(batch)
                        and now < batch.expires_at):
                    self._add_runnable(runnable, batch)
            self._runnable = runnable
            for event in self._work.values():
                event.set()
            return
        await self.failing.load(self.steps.terms)
        batches = await asyncio.to_thread(self.store.active_batches)
        ended = bool(self.active_ids - {b.id for b in batches})  # files only they read can go now
        self.active_ids = {b.id for b in batches}
        await self.housekeeping.run(self.active_ids, ended=ended)
        runnable = {}
        for batch in batches:
            self._withdrawals.look(batch, now)
            if batch.id in self._busy:
                if batch.status is BatchStatus.IN_PROGRESS:
                    self._add_runnable(runnable, batch)
                continue
            if self.failing.waiting(batch.id):
                if batch.status is BatchStatus.IN_PROGRESS:
                    self._add_runnable(runnable, batch)  # its requests still run; only the step waits
                continue
            if batch.status is BatchStatus.VALIDATING:
                self._spawn(batch.id, self._ingest(batch), batch=batch)
            elif batch.status is BatchStatus.IN_PROGRESS and self.lanes.handles(batch):
                counts = batch.request_counts
                if counts.completed + counts.failed >= counts.total:
                    self._spawn(batch.id, self._finish(batch))
                else:  # forwarded to a provider's batch API: one durable step at a time
                    self._spawn(batch.id, self.lanes.advance(batch), wake=False)
            elif batch.status is BatchStatus.IN_PROGRESS:
                if now >= batch.expires_at:  # completed after all if every request ran (domain/steps.py)
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
                    self._spawn(batch.id, self._ingest(batch), batch=batch)
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

    def _spawn(self, batch_id: str, coro: object, *, wake: bool = True, batch: Batch | None = None) -> None:
        self._busy.add(batch_id)

        async def guarded() -> None:
            try:
                await coro  # type: ignore[misc]
                await self.failing.cleared(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                failures = await self.failing.failed(batch_id)
                verdict = self._steps.after_failure(  # only validation (given ``batch``) can be given up
                    failures, self.clock.now(), batch.expires_at if batch else None, can_give_up=batch is not None)
                if verdict.give_up and batch is not None and await asyncio.to_thread(
                        give_up_validation, batch, self.store, self.clock, failures, exc):
                    await self.failing.cleared(batch_id)
                    return
                self.failing.defer(batch_id, verdict.delay_s)
                log.exception("batch step failed (%d in a row); will retry in %.1f s", failures, verdict.delay_s,
                              extra={"event": "batch_step_failed", "batch_id": batch_id})
            finally:
                self._busy.discard(batch_id)
                if wake:
                    self.wake()

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step (the engine stopping) never awaits ``coro``: close it,
        # or Python warns that it was never awaited. (Closing a finished coroutine does nothing.)
        task.add_done_callback(lambda _: getattr(coro, "close", lambda: None)())

    # ---- housekeeping ------------------------------------------------------------------
    def purge_files(self) -> int:
        """Remove the bytes of deleted and expired files that no active batch reads any more."""
        return purge_files(self.store, self.blobs, self.clock.now())

    def sweep_orphan_blobs(self) -> int:
        """Remove blobs no file refers to: only before the engine and the API start (lock held)."""
        return sweep_orphan_blobs(self.store, self.blobs)

    async def _transitioned(self, old: BatchStatus, batch_id: str) -> None:
        after = await asyncio.to_thread(self.store.get_batch, None, batch_id)
        if after is not None and after.status is not old:
            log_transition(old, after)

    # ---- batch steps -------------------------------------------------------------------
    async def _ingest(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()

        def seen(model: str) -> None:  # from the ingest's thread
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nothing to warm
                loop.call_soon_threadsafe(self.starts.warm, model)

        # (None: an ingest spawned from a status read before another ingest ended; that one did the work)
        if batch.endpoint == MESSAGES_ENDPOINT and await asyncio.to_thread(self.store.is_message_batch, batch.id):
            # A Message Batch: a bad request is that request's error, not the batch's (ingest_messages.py).
            went = await asyncio.to_thread(
                ingest_message_batch, batch, self.store, self.blobs, self.catalog, self.clock)
        else:
            went = await asyncio.to_thread(
                ingest_batch, batch, self.store, self.blobs, self.catalog, self.settings.input_limits, self.clock,
                seen)
        if went is not None:
            await self._transitioned(batch.status, batch.id)

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
            log_transition(BatchStatus.IN_PROGRESS, moved)
        if await asyncio.to_thread(finalize_batch, batch, self.store, self.blobs, self.clock,
                                   [BatchStatus.FINALIZING], BatchStatus.COMPLETED):
            await self._transitioned(BatchStatus.FINALIZING, batch.id)

    async def _close(self, batch: Batch, final: BatchStatus, since: float) -> None:
        """Expiry or cancellation: nothing new starts; in-flight work drains, then the files."""
        code = BATCH_EXPIRED if final is BatchStatus.EXPIRED else BATCH_CANCELLED
        never_ran = Result.never_ran(code, NEVER_RAN_MESSAGES[code])
        await asyncio.to_thread(self.store.close_unstarted, batch.id, never_ran, False)
        pending, running = await asyncio.to_thread(self.store.open_counts, batch.id)
        if running and self.clock.now() < since + self.settings.drain_timeout_s:
            return  # let in-flight requests finish; look again on the next tick
        if pending or running:
            # Put back since we looked (a backend withdrew it unsent, or it awaits a retry): it never ran.
            await asyncio.to_thread(self.store.close_unstarted, batch.id, never_ran, False)
            # Still running past the drain timeout: abandoned.
            abandoned = Result.never_ran(
                code, NEVER_RAN_MESSAGES[code] + " It had not finished when the batch closed and its result, if "
                "any, was discarded.")
            await asyncio.to_thread(self.store.close_unstarted, batch.id, abandoned, True)
        done = await asyncio.to_thread(
            finalize_batch, batch, self.store, self.blobs, self.clock, [batch.status], final)
        if done:
            await self._transitioned(batch.status, batch.id)

    # ---- execution ---------------------------------------------------------------------
    async def _dispatch(self, backend: Backend) -> None:
        key, models = id(backend), ",".join(m.id for m in backend.models())
        work = self._work.setdefault(key, asyncio.Event())
        slots = asyncio.Semaphore(max(1, backend.max_concurrency))
        turns = self._turns[key] = FairTurns(self.store, self.settings.scheduling, self.clock,
                                             backend.max_concurrency, backend.chunk_size,
                                             [m.id for m in backend.models()])
        started = False
        start_failures = 0
        while not self._stopping:
            await slots.acquire()
            got: list[tuple[Batch, list[ClaimedRequest]]] = []
            work.clear()  # before reading the candidates: a tick that sets it while this claim runs is not lost
            candidates = self._runnable.get(key, [])
            if candidates and not started:
                # Load the model before claiming anything, so that its load time does not eat the leases.
                try:
                    await self.starts.start(backend)
                    started = True
                except Exception as exc:  # (one line; the traceback with -v)
                    self.errors += 1
                    start_failures += 1
                    log.error("backend failed to start (%s: %s); trying again", type(exc).__name__, exc,
                              exc_info=log.isEnabledFor(logging.DEBUG), extra={"event": "backend_start_failed"})
                    slots.release()
                    await asyncio.sleep(min(60.0, self.settings.poll_interval_s * 2 ** min(start_failures, 10)))
                    continue
            try:
                got = await self._chunk_call(
                    claim_in_turn, self.store, turns, candidates, self.owner, self.clock.now(), self.settings.lease_s,
                    backend.chunk_size, self.settings.retry.max_attempts)
                self.repeats.ok(f"claim_failed:{models}")
            except Exception as exc:
                self.errors += 1
                self.repeats.failed(f"claim_failed:{models}", f"claim failed (model {models})", exc)
            if not got:
                slots.release()
                if key not in self._dry:  # ran dry: a batch may be done; from now on each finished chunk says so
                    self._dry.add(key)
                    self.wake()
                await self._sleep_until(work, self.settings.poll_interval_s)
                continue
            self._dry.discard(key)
            # The slot is freed once the results are stored (not when the backend answers): a spending cap
            # is checked at the next claim against the cost stored so far (services/budget_guard.py).
            task = asyncio.create_task(self._run_chunk(backend, *got[0]) if len(got) == 1 else
                                       self._run_chunks(backend, got))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                slots.release()

            task.add_done_callback(done)

    async def _run_chunks(self, backend: Backend, groups: list[tuple[Batch, list[ClaimedRequest]]]) -> None:
        """A chunk that spans batches: each batch's part runs as a chunk of its own, all at once."""
        await asyncio.gather(*(self._run_chunk(backend, batch, claimed) for batch, claimed in groups))

    async def _sleep_until(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait for ``event`` or ``timeout_s``. (Not ``wait_for``: on Python 3.11 it can swallow a
        cancellation that arrives as the event fires, and the dispatcher would never stop.)"""
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout_s)
        finally:
            waiter.cancel()

    async def _renew(self, batch_id: str, leases: list[tuple[int, str]]) -> None:
        every = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.store.renew, batch_id, leases,
                                        self.clock.now() + self.settings.lease_s)
            except Exception:
                # Keep trying: a lease that runs out only costs a second run of these requests.
                log.warning("renewing leases failed", exc_info=True, extra={"event": "renew_failed",
                                                                             "batch_id": batch_id})

    async def _chunk_call(self, fn: Callable[..., T], *args: object) -> T:
        """A claim, or a chunk's results stored: on a thread, or here (``EngineSettings.inline_chunk_calls``)."""
        if self.settings.inline_chunk_calls:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _store_with_retries(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """A store write of results held only in memory: retried through a locked or full store."""
        delay = self.settings.store_retry_base_s
        attempts = max(1, self.settings.store_retry_attempts)
        for attempt in range(1, attempts + 1):
            try:
                done = await self._chunk_call(fn, *args)
                self.repeats.ok("store_retry", "store_failed")
                return done
            except Exception as exc:
                if attempt == attempts or self._stopping:
                    raise
                self.repeats.failed("store_retry", f"{what} failed; retrying (at most {attempts} tries)", exc,
                                    level=logging.WARNING)
                await asyncio.sleep(delay)
                delay = min(self.settings.store_retry_max_s, delay * 2)
        raise AssertionError("unreachable")

    async def _run_chunk(self, backend: Backend, batch: Batch, claimed: list[ClaimedRequest]) -> None:
        renewer = asyncio.create_task(self._renew(batch.id, [(c.idx, c.attempt_id) for c in claimed]))
        try:
            bodies, began = [jsonx.loads(c.body) for c in claimed], self.clock.now()
            try:
                with self._withdrawals.chunk(batch.id) as withdrawal, on_behalf_of(batch.project):
                    results: Sequence[Result | Failure] = await backend.execute(batch.endpoint, bodies)
                if len(results) != len(bodies):
                    raise RuntimeError(f"backend returned {len(results)} results for {len(bodies)} requests")
                self.repeats.ok(f"backend_failed:{batch.model}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.repeats.failed(f"backend_failed:{batch.model}", f"backend call failed (model {batch.model})",
                                    exc, level=logging.WARNING, extra={"batch_id": batch.id})
                results = [Failure("backend_error", f"{type(exc).__name__}: {exc}")] * len(bodies)
            took = self.clock.now() - began  # the model time, without storing the results
            completions, retries = decide(claimed, results, self.settings.retry, self._random, self.clock.now(),
                                          withdrawal.is_set())
            # One trip to a thread for all of it. Retrying is safe: each write is one transaction, and
            # fencing makes a repeat of one that was stored a no-op.
            await self._store_with_retries("storing results", self._store_chunk, self._turns[id(backend)], batch,
                                           completions, retries, took, len(claimed))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The results are lost with this chunk, but the leases expire and the requests run again.
            self.errors += 1
            self.repeats.failed("store_failed", "storing results failed", exc, extra={"batch_id": batch.id})
        finally:
            renewer.cancel()
        if id(backend) in self._dry:  # (while claims find work, the ticks every poll_interval_s suffice)
            self.wake()

    def _store_chunk(self, turns: FairTurns, batch: Batch, completions: list[Completion], retries: list[Retry],
                     took: float, claimed: int) -> None:
        if completions:
            self.store.complete(batch.id, completions)
        if retries:
            self.store.retry_later(batch.id, retries)
        turns.used(batch, took, claimed)  # (last: a repeat after a failed write must not count it twice)
