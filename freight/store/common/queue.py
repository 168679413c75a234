"""``RequestQueue`` over named SQL (queue.sql): claims under leases, every result fenced by the
attempt id that holds the claim."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from freight.domain import ids
from freight.domain.claims import Tally, is_lost, worker_lost
from freight.domain.requests import ClaimedRequest, RequestState, Result
from freight.ports.records import Completion, Retry

from .base import Base
from .db import Tx
from .rows import result_columns, result_params

#: The columns of every claim statement (queue.sql), in their order: the rows are read as plain tuples.
BATCH_ID, IDX, STATE, ATTEMPTS, ATTEMPT_ID, CUSTOM_ID, BODY = range(7)
ClaimRow = tuple[Any, ...]


class ClaimHints:
    """Where this process's next claim of each batch starts reading its pending requests (PostgreSQL).

    Every claimed and every finished request leaves a dead entry at the front of PostgreSQL's open-requests
    index until a vacuum removes it, and a claim that starts at the front walks past all of them: with
    500,000 of 1,000,000 requests done, 3,586 index pages for 256 rows (11 ms), a claim's cost growing
    with the batch. So a claim starts just after the last pending request this process claimed from the
    batch. A request waiting behind that point (put back for a retry, or left in its backoff) is found by
    a scan from the front: at once when a claim from the hints comes back short of its limit (in the same
    claim), and at least every ``FULL_SCAN_EVERY_S``. Only a hint: a process without one (a new worker)
    reads from the front, and the running requests (expired leases) are always read whole. (SQLite has no
    hints: it updates rows in place and leaves no dead entries.)
    """

    FULL_SCAN_EVERY_S = 5.0
    MAX_BATCHES = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._from: dict[str, tuple[int, float]] = {}  # batch -> (the idx to start at, its last scan from 0)

    def starts(self, batches: Sequence[str]) -> list[int]:
        now = self._clock()
        with self._lock:
            hints = [self._from.get(b) for b in batches]
        return [h[0] if h is not None and now - h[1] < self.FULL_SCAN_EVERY_S else 0 for h in hints]

    def claimed(self, batches: Sequence[str], starts: Sequence[int], rows: Sequence[ClaimRow], limit: int) -> None:
        now = self._clock()
        last: dict[str, int] = {}
        for row in rows:
            if row[STATE] == RequestState.PENDING:
                last[row[BATCH_ID]] = row[IDX]  # (in idx order within a batch)
        with self._lock:
            if len(self._from) > self.MAX_BATCHES:
                self._from.clear()
            for batch, start in zip(batches, starts, strict=True):
                if len(rows) < limit:
                    self._from.pop(batch, None)  # came back short: the next claim reads from the front
                elif batch in last:
                    scanned = now if start == 0 else self._from.get(batch, (0, now))[1]
                    self._from[batch] = (last[batch] + 1, scanned)


class _Fenced(Exception):
    """Some results of a completion no longer hold their claim: store them one by one."""


class QueueMixin(Base):
    #: Where claims start reading each batch's pending requests; only where a store needs it (PostgreSQL).
    _claim_hints: ClaimHints | None = None

    def claim(
        self, batch_id: str, owner: str, now: float, lease_s: float, limit: int, max_attempts: int
    ) -> list[ClaimedRequest]:
        with self._db.write(durable=False) as tx:  # a lease lost with the database costs a rerun at most
            rows = tx.tuples("claim_candidates", {"batch_id": batch_id, "now": now, "limit": limit})
            return self._lease(tx, rows, owner, now + lease_s, max_attempts)

    def claim_runnable(
        self, models: Sequence[str], owner: str, now: float, lease_s: float, limit: int, max_attempts: int,
        batches: Sequence[str] | None = None,
    ) -> list[ClaimedRequest]:
        if not models or limit <= 0 or (batches is not None and not batches):
            return []
        with self._db.write(durable=False) as tx:
            if batches is None:
                rows = tx.tuples("claim_candidates_any", {"models": tx.array(list(models)), "now": now, "limit": limit})
                return self._lease(tx, rows, owner, now + lease_s, max_attempts)
            hints = self._claim_hints
            starts = hints.starts(batches) if hints is not None else [0] * len(batches)
            claimed = self._claim_in(tx, batches, starts, models, owner, now, lease_s, limit, max_attempts)
            if len(claimed) < limit and any(starts):
                # Short from where the hints start: what waits behind them (retries) is read now, in this
                # claim (the rows just leased no longer qualify, so none comes back twice).
                claimed += self._claim_in(tx, batches, [0] * len(batches), models, owner, now, lease_s,
                                          limit - len(claimed), max_attempts)
            return claimed

    def _claim_in(
        self, tx: Tx, batches: Sequence[str], starts: list[int], models: Sequence[str], owner: str, now: float,
        lease_s: float, limit: int, max_attempts: int,
    ) -> list[ClaimedRequest]:
        rows = tx.tuples("claim_candidates_in", {"batches": tx.array(list(batches)), "from_idx": tx.array(starts),
                                              "models": tx.array(list(models)), "now": now, "limit": limit})
        if self._claim_hints is not None:
            self._claim_hints.claimed(batches, starts, rows, limit)
        return self._lease(tx, rows, owner, now + lease_s, max_attempts)

    @classmethod
    def _lease(cls, tx: Tx, rows: list[ClaimRow], owner: str, until: float, max_attempts: int) -> list[ClaimedRequest]:
        claimed: list[ClaimedRequest] = []
        # One random stem per claim and the idx after it: unique attempt ids without reading the
        # system's random source once per request (that cost more than the lease update itself).
        stem = ids.new_attempt_id()
        leases: dict[str, list[int]] = defaultdict(list)
        lost: dict[str, list[Result]] = defaultdict(list)
        prefix = stem + "."  # each attempt id is what the lease statement writes: the stem, a dot, the idx
        for batch_id, idx, state, attempts, held_by, custom_id, body in rows:
            if is_lost(state, attempts, max_attempts):
                result = worker_lost(attempts, max_attempts)
                if tx.run("close_lost", {"batch_id": batch_id, "idx": idx, "attempt_id": held_by,
                                         **result_params(result)}):
                    lost[batch_id].append(result)
                continue
            leases[batch_id].append(idx)
            claimed.append(ClaimedRequest(batch_id, idx, custom_id, bytes(body), prefix + str(idx), attempts + 1))
        for batch_id, idxs in leases.items():
            tx.run("lease", {"batch_id": batch_id, "idxs": tx.array(idxs), "stem": stem, "owner": owner,
                             "until": until})
        for batch_id, results in lost.items():
            cls._add_counts(tx, batch_id, Tally.of(results))
        return claimed

    def renew(self, batch_id: str, leases: Sequence[tuple[int, str]], until: float) -> int:
        with self._db.write(durable=False) as tx:
            return tx.bulk("renew", {"batch_id": [batch_id] * len(leases), "idx": [idx for idx, _ in leases],
                                     "attempt_id": [attempt_id for _, attempt_id in leases],
                                     "until": [until] * len(leases)})

    def complete(self, batch_id: str, items: Sequence[Completion]) -> int:
        results = [item.result for item in items]
        columns: dict[str, Sequence[object]] = {
            "batch_id": [batch_id] * len(items), "idx": [item.idx for item in items],
            "attempt_id": [item.attempt_id for item in items], **result_columns(results)}
        try:
            with self._db.write() as tx:
                # The common case in one go: every attempt still holds its claim. If any does not
                # (fenced off), the transaction is rolled back and done row by row below.
                if tx.bulk("complete_all", columns) != len(items):
                    raise _Fenced
                self._add_counts(tx, batch_id, Tally.of(results))
                return len(items)
        except _Fenced:
            pass
        params = [{"batch_id": batch_id, "idx": item.idx, "attempt_id": item.attempt_id,
                   **result_params(item.result)} for item in items]
        with self._db.write() as tx:
            counts = tx.each("complete", params)
            stored = [item.result for item, n in zip(items, counts, strict=True) if n == 1]
            self._add_counts(tx, batch_id, Tally.of(stored))
        return len(stored)

    def retry_later(self, batch_id: str, items: Sequence[Retry]) -> int:
        with self._db.write() as tx:
            return sum(tx.each("retry_later", [{"batch_id": batch_id, "idx": item.idx, "attempt_id": item.attempt_id,
                                                "not_before": item.not_before, "last_error": item.last_error,
                                                "refund": 1 if item.refund else 0}
                                               for item in items]))

    def close_unstarted(self, batch_id: str, result: Result, include_running: bool) -> int:
        with self._db.write() as tx:
            n = tx.run("close_open" if include_running else "close_pending",
                       {"batch_id": batch_id, **result_params(result)})
            self._add_counts(tx, batch_id, Tally.repeated(result, n))
            return n

    def open_counts(self, batch_id: str) -> tuple[int, int]:
        with self._db.read() as tx:
            counts = {row["state"]: int(row["n"]) for row in tx.all("open_counts", {"batch_id": batch_id})}
        return counts.get(RequestState.PENDING, 0), counts.get(RequestState.RUNNING, 0)

    def release_leases(self, owner: str | None = None) -> int:
        with self._db.write() as tx:
            n = tx.run("release_all_leases") if owner is None else tx.run("release_leases_of", {"owner": owner})
            if n:
                self._hint_work(tx)
            return n
