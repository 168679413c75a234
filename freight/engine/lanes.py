"""The LaneRunner: drives freight batches whose model is forwarded to a provider's batch API.

Why not a ``Backend``: a backend answers a chunk of requests in seconds, under a lease. A batch
lane takes up to 50,000 requests at once and answers hours later, through several calls (upload,
create, poll, download) any of which a crash can interrupt. So lane batches are not claimed by the
dispatcher (the catalog has no backend for their model); the engine's tick hands them to
``LaneRunner.advance`` instead, which takes each of the batch's *subs* (upstream batches) one
durable step further (freight/domain/lanes.py has the state machine) and returns.

What lives where:

- ``requests``: a forwarded request stays ``pending`` until its outcome is stored, so nothing of
  the engine's lease machinery (release at start-up, lease expiry) touches it;
- ``lane_items``: which sub holds which request (a request is held by at most one live sub);
- ``lane_subs``: each sub's step, upstream ids and last known progress; written before the step
  that depends on it, so a restart resumes every sub where it stood.

A round: the pending requests that no live sub holds are planned into subs (within the lane's
limits on requests and bytes per upstream batch, one round number per sub), uploaded, created and
polled with backoff. When an upstream batch ends, its outcomes are stored in one transaction with
the sub's end; what did not run (expired, cancelled upstream) and what failed in a retryable way is
handed back and planned again in the next round, up to ``lane.max_rounds`` submissions, after which
the last outcome is final. Cancel (or freight's own completion window running out) cancels every
live upstream batch, keeps what finished, and gives the rest ``batch_cancelled``/``batch_expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import IO

from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import Clock
from freight.domain.lanes import (
    SUB_PREFIX,
    LaneOutcome,
    LaneRefused,
    LaneSub,
    OutcomeKind,
    SubState,
    may_step,
    parse_upstream_key,
    upstream_key,
)
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED, NEVER_RAN_MESSAGES, OUTPUT_INVALID, Outcome, Result
from freight.engine.finalize import finalize_batch
from freight.ports import BatchLane, BlobStore, Store
from freight.services.catalog import ModelCatalog
from freight.services.outputs import Check, check_answer, for_upstream, stored_check
from freight.services.transitions import log_transition

log = logging.getLogger("freight.lanes")

PLAN_READ = 5000
BODY_READ = 1000
#: Bytes a line adds around its body (custom_id, method, url).
LINE_OVERHEAD = 120


@dataclass
class _Due:
    at: float = 0.0
    interval: float = 0.0


class LaneRunner:
    def __init__(self, store: Store, blobs: BlobStore, catalog: ModelCatalog, clock: Clock, *,
                 random: Callable[[], float] = _random.random):
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.clock = clock
        self._random = random
        self._due: dict[str, _Due] = {}
        #: Batches whose pool may hold requests to plan (all of them, after a start).
        self._planned: set[str] = set()
        self._closing_since: dict[str, float] = {}

    def handles(self, batch: Batch) -> bool:
        return self.catalog.lane_for(batch.model) is not None

    # ---- one step of one batch ------------------------------------------------------------
    async def advance(self, batch: Batch) -> None:
        lane = self.catalog.lane_for(batch.model)
        assert lane is not None
        now = self.clock.now()
        final: BatchStatus | None = None
        if batch.status is BatchStatus.CANCELLING:
            final = BatchStatus.CANCELLED
        elif now >= batch.expires_at:
            final = BatchStatus.EXPIRED
        paused = batch.paused_at is not None
        if final is None and not paused and batch.id not in self._planned:
            await asyncio.to_thread(self._plan, batch, lane)
            self._planned.add(batch.id)
        subs = await asyncio.to_thread(self.store.lane_subs, batch.id)
        closing_since = None
        if final is not None:
            closing_since = self._closing_since.setdefault(batch.id, now)
            if now - closing_since > lane.cancel_timeout_s:
                for sub in subs:  # the upstream did not wind down in time: stop waiting for it
                    log.warning("gave up waiting for an upstream batch to cancel",
                                extra={"event": "lane_abandoned", "batch_id": batch.id, "sub": sub.id,
                                       "upstream_id": sub.upstream_id})
                    await asyncio.to_thread(self.store.lane_finish, sub.id, batch.id, [])
                subs = []
        for sub in subs:
            if not may_step(sub.state, paused=paused, closing=final is not None):
                continue
            due = self._due.setdefault(sub.id, _Due(at=0.0, interval=lane.poll_interval_s))
            if now < due.at and not (final is not None and sub.state is not SubState.RUNNING):
                continue
            try:
                progressed = await self._step(batch, lane, sub, final is not None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                due.interval = min(lane.max_poll_interval_s, max(lane.poll_interval_s, due.interval * 2))
                due.at = self.clock.now() + due.interval * (0.5 + self._random() / 2)
                log.warning("lane step failed; will try again in %.1fs: %s", due.interval, exc,
                            extra={"event": "lane_step_failed", "batch_id": batch.id, "sub": sub.id,
                                   "state": str(sub.state)})
                continue
            if progressed:
                due.at, due.interval = 0.0, lane.poll_interval_s
            else:
                due.at = self.clock.now() + (lane.poll_interval_s if final is not None else due.interval)
                due.interval = min(lane.max_poll_interval_s, due.interval * 1.5)
        if final is not None and closing_since is not None:
            await self._close_if_drained(batch, final)

    async def _close_if_drained(self, batch: Batch, final: BatchStatus) -> None:
        if await asyncio.to_thread(self.store.lane_subs, batch.id):
            return
        code = BATCH_EXPIRED if final is BatchStatus.EXPIRED else BATCH_CANCELLED
        await asyncio.to_thread(self.store.close_unstarted, batch.id, Result.never_ran(code, NEVER_RAN_MESSAGES[code]),
                                True)
        done = await asyncio.to_thread(finalize_batch, batch, self.store, self.blobs, self.clock, [batch.status],
                                       final)
        if done:
            self._closing_since.pop(batch.id, None)
            self._planned.discard(batch.id)
            after = await asyncio.to_thread(self.store.get_batch, None, batch.id)
            if after is not None:
                log_transition(batch.status, after, lane=True)

    # ---- planning -------------------------------------------------------------------------
    def _plan(self, batch: Batch, lane: BatchLane) -> int:
        """Put every pending request no live sub holds into new subs (one round number each)."""
        limits = lane.limits
        open_subs: dict[int, tuple[list[int], int]] = {}  # round -> (idxs, bytes)
        planned = 0
        too_big: list[tuple[int, Result]] = []

        def emit(round_no: int) -> None:
            nonlocal planned
            idxs, size = open_subs.pop(round_no)
            sub = LaneSub(id=SUB_PREFIX + secrets.token_hex(8), batch_id=batch.id, round=round_no,
                          state=SubState.PLANNED, requests=len(idxs), bytes=size, created_at=self.clock.now())
            self.store.lane_plan(sub, idxs)
            planned += 1

        after = -1
        while rows := self.store.lane_unassigned(batch.id, after, PLAN_READ):
            after = rows[-1][0]
            for idx, body, held in rows:
                size = len(body) + LINE_OVERHEAD
                if size > limits.max_bytes:
                    too_big.append((idx, Result.never_ran(
                        "request_too_large", f"This request is {size} bytes; one upstream batch takes at most "
                        f"{limits.max_bytes}.")))
                    continue
                round_no = min(held + 1, lane.max_rounds)
                idxs, total = open_subs.setdefault(round_no, ([], 0))
                if idxs and (len(idxs) >= limits.max_requests or total + size > limits.max_bytes):
                    emit(round_no)
                    idxs, total = open_subs.setdefault(round_no, ([], 0))
                idxs.append(idx)
                open_subs[round_no] = (idxs, total + size)
        if too_big:
            # A sub that never goes upstream: it only carries these requests to their results.
            sub = LaneSub(id=SUB_PREFIX + secrets.token_hex(8), batch_id=batch.id, round=0,
                          state=SubState.PLANNED, requests=len(too_big), bytes=0, created_at=self.clock.now())
            self.store.lane_plan(sub, [idx for idx, _ in too_big])
            self.store.lane_finish(sub.id, batch.id, too_big)
        for round_no in list(open_subs):
            emit(round_no)
        if planned:
            log.info("lane batch planned", extra={"event": "lane_planned", "batch_id": batch.id, "subs": planned})
        return planned

    # ---- the steps of one sub ---------------------------------------------------------------
    @contextlib.contextmanager
    def _lines(self, batch: Batch, sub: LaneSub) -> Iterator[IO[bytes]]:
        """The sub's requests as freight batch lines (custom_id = the upstream key), in a temporary blob."""
        key = f"lane-{sub.id}"
        writer = self.blobs.writer(key)
        url = batch.endpoint.encode()
        try:
            after = -1
            while rows := self.store.lane_bodies(sub.id, after, BODY_READ):
                writer.write(b"".join(
                    b'{"custom_id":"' + upstream_key(sub.id, idx).encode() + b'","method":"POST","url":"' + url
                    + b'","body":' + for_upstream(body) + b"}\n" for idx, body in rows))
                after = rows[-1][0]
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        try:
            with self.blobs.open(key) as fh:
                yield fh
        finally:
            self.blobs.delete(key)

    async def _step(self, batch: Batch, lane: BatchLane, sub: LaneSub, closing: bool) -> bool:
        """Take ``sub`` one step on. True when it moved (the next step may follow at once)."""
        update = self.store.lane_update
        state = sub.state
        if state in (SubState.PLANNED, SubState.UPLOADING, SubState.UPLOADED) and closing:
            # Nothing runs upstream yet: its requests go back to the pool, where the close finds them.
            await asyncio.to_thread(self.store.lane_finish, sub.id, batch.id, [])
            return True
        if state is SubState.UPLOADING:
            found = await lane.find_upload(sub.id)
            if found is not None:
                await asyncio.to_thread(update, sub.id, state=SubState.UPLOADED, upload_id=found)
                return True
            state = SubState.PLANNED
        if state is SubState.PLANNED:
            await asyncio.to_thread(update, sub.id, state=SubState.UPLOADING)
            try:
                with self._lines(batch, sub) as fh:
                    upload_id = await lane.upload(sub.id, batch.endpoint, fh)
            except LaneRefused as exc:  # (a 4xx on upload, as on create: for good, not tried again for ever)
                await self._fail_sub(batch, sub, "upstream_refused", str(exc))
                return True
            await asyncio.to_thread(update, sub.id, state=SubState.UPLOADED, upload_id=upload_id)
            log.info("lane sub uploaded", extra={"event": "lane_uploaded", "batch_id": batch.id, "sub": sub.id,
                                                 "upload_id": upload_id, "requests": sub.requests})
            return True
        if state is SubState.CREATING:
            assert sub.create_sent_at is not None
            found = await lane.find_created(sub.id, sub.upload_id, sub.create_sent_at, sub.requests)
            if found is not None:
                await asyncio.to_thread(update, sub.id, state=SubState.RUNNING, upstream_id=found)
                log.info("lane sub found upstream", extra={"event": "lane_recovered", "batch_id": batch.id,
                                                           "sub": sub.id, "upstream_id": found})
                return True
            if closing:
                await asyncio.to_thread(self.store.lane_finish, sub.id, batch.id, [])
                return True
            state = SubState.UPLOADED
        if state is SubState.UPLOADED:
            await asyncio.to_thread(update, sub.id, state=SubState.CREATING, create_sent_at=self.clock.now())
            try:
                with self._lines(batch, sub) as fh:
                    upstream_id = await lane.create(sub.id, batch.endpoint, sub.upload_id, fh)
            except LaneRefused as exc:
                await self._fail_sub(batch, sub, "upstream_refused", str(exc))
                return True
            await asyncio.to_thread(update, sub.id, state=SubState.RUNNING, upstream_id=upstream_id)
            log.info("lane sub created", extra={"event": "lane_created", "batch_id": batch.id, "sub": sub.id,
                                                "upstream_id": upstream_id, "round": sub.round})
            return True
        assert state is SubState.RUNNING and sub.upstream_id is not None
        if closing and not sub.cancel_sent:
            try:
                await lane.cancel(sub.upstream_id)
            except LaneRefused as exc:  # (not there for this key: nothing to cancel, nothing to poll either)
                return await self._gone(batch, sub, closing, str(exc))
            await asyncio.to_thread(update, sub.id, cancel_sent=True)
        try:
            progress = await lane.poll(sub.upstream_id)
        except LaneRefused as exc:  # (the upstream batch is not there for this key: asking again will not help)
            return await self._gone(batch, sub, closing, str(exc))
        moved = (progress.completed, progress.failed, progress.status) != (sub.completed, sub.failed,
                                                                           sub.upstream_status)
        if moved:
            await asyncio.to_thread(update, sub.id, upstream_status=progress.status, completed=progress.completed,
                                    failed=progress.failed)
        if progress.failure is not None:
            await self._fail_sub(batch, sub, "upstream_batch_failed", progress.failure)
            return True
        if not progress.ended:
            return False
        try:
            outcomes = await lane.outcomes(sub.upstream_id)
        except LaneRefused as exc:
            return await self._gone(batch, sub, closing, str(exc))
        sub = replace(sub, upstream_status=progress.status)  # (what _settle names in upstream_not_run)
        stored = await asyncio.to_thread(self._settle, batch, lane, sub, outcomes, closing)
        self._planned.discard(batch.id)  # handed-back requests wait in the pool for the next round
        self._due.pop(sub.id, None)
        log.info("lane sub downloaded", extra={"event": "lane_downloaded", "batch_id": batch.id, "sub": sub.id,
                                               "upstream_id": sub.upstream_id, "stored": stored,
                                               "requests": sub.requests})
        return True

    async def _gone(self, batch: Batch, sub: LaneSub, closing: bool, message: str) -> bool:
        """The upstream batch or its results cannot be read with this key (401/403/404/410): its requests
        fail with ``upstream_refused``, or, while the batch closes, go back to be closed with it."""
        if closing:
            await asyncio.to_thread(self.store.lane_finish, sub.id, batch.id, [])
        else:
            await self._fail_sub(batch, sub, "upstream_refused", message)
        return True

    async def _fail_sub(self, batch: Batch, sub: LaneSub, code: str, message: str) -> None:
        idxs = await asyncio.to_thread(self.store.lane_items, sub.id)
        result = Result.never_ran(code, message)
        await asyncio.to_thread(self.store.lane_finish, sub.id, batch.id, [(idx, result) for idx in idxs])
        failed = code == "upstream_batch_failed"
        log.warning("the upstream batch failed" if failed else "the upstream refused a batch",
                    extra={"event": "lane_failed" if failed else "lane_refused", "batch_id": batch.id, "sub": sub.id,
                           "reason": message})

    def _settle(self, batch: Batch, lane: BatchLane, sub: LaneSub, outcomes: list[LaneOutcome],
                closing: bool) -> int:
        """Store what is final; hand back (by leaving it out) what gets another round."""
        last_round = sub.round >= lane.max_rounds
        by_idx: dict[int, LaneOutcome] = {}
        for outcome in outcomes:
            idx = parse_upstream_key(sub.id, outcome.key)
            if idx is not None:
                by_idx[idx] = outcome
        results: list[tuple[int, Result]] = []
        checks = self._checks(batch, sub)
        for idx in self.store.lane_items(sub.id):
            found = by_idx.get(idx)
            if found is None or found.kind is OutcomeKind.NOT_RUN:
                if last_round and not closing:
                    results.append((idx, Result.never_ran(
                        "upstream_not_run", f"The upstream batch ended without running this request in "
                        f"{sub.round} rounds (its last status: {sub.upstream_status or 'unknown'}).")))
                continue  # back to the pool: a new round, or batch_cancelled/batch_expired at the close
            if found.kind is OutcomeKind.RETRY and not (last_round or closing):
                continue
            assert found.result is not None
            results.append((idx, checked(batch.endpoint, found.result, checks.get(idx))))
        return self.store.lane_finish(sub.id, batch.id, results)

    def _checks(self, batch: Batch, sub: LaneSub) -> dict[int, Check]:
        """The output check of each request of ``sub`` that asks for one (by index)."""
        checks: dict[int, Check] = {}
        after = -1
        while rows := self.store.lane_bodies(sub.id, after, BODY_READ):
            for idx, body in rows:
                check = stored_check(batch.endpoint, body)
                if check is not None:
                    checks[idx] = check
            after = rows[-1][0]
        return checks


def checked(endpoint: str, result: Result, check: Check | None) -> Result:
    """A provider's answer, or ``output_invalid`` when it fails the check its request asked for. Not
    asked again: another round of a provider's batch takes up to its whole window (docs/output-checks.md)."""
    if check is None or result.outcome is not Outcome.SUCCEEDED:
        return result
    problem = check_answer(endpoint, result.body, check)
    if problem is None:
        return result
    return Result(error_code=OUTPUT_INVALID, input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                  invalid_outputs=1, error_message=f"The answer failed its JSON-schema check: {problem}.")
