"""The budget check where requests are claimed: a batch that has spent its cap starts nothing more.

``BudgetedQueue`` wraps the store the engine claims from. A claim for a batch with a cap first reads
the batch; once its cost so far reaches the cap, the batch's unstarted requests are closed with a
``budget_exceeded`` line each and the batch is moved to ``cancelling`` — requests already running
finish, and the engine's cancellation drains them and writes the files (the batch ends
``cancelled``). Every process claims through this check, so no process state is needed beyond a
cache of which batches have no cap (a cap never changes after create).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from freight.domain import budget
from freight.domain.batches import Batch, BatchStatus
from freight.domain.requests import BATCH_CANCELLED, ClaimedRequest, Result
from freight.ports import Store
from freight.services.cost import CostControls
from freight.services.transitions import log_transition

_UNCAPPED_CACHE_MAX = 100_000


class BudgetedQueue:
    """A store whose ``claim`` honours spending caps; every other call goes to the store as is."""

    def __init__(self, store: Store, cost: CostControls):
        self._store = store
        self._cost = cost
        self._uncapped: set[str] = set()
        #: batch -> the most one of its requests is estimated to cost (``CostControls.largest_request_usd``):
        #: its input file never changes, so it is read once per process.
        self._bounds: dict[str, float | None] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim(self, batch_id: str, owner: str, now: float, lease_s: float, limit: int,
              max_attempts: int) -> list[ClaimedRequest]:
        if batch_id not in self._uncapped:
            limit = self._allowance(batch_id, now, limit)
            if limit == 0:
                return []
        return self._store.claim(batch_id, owner, now, lease_s, limit, max_attempts)

    def claim_runnable(self, models: Sequence[str], owner: str, now: float, lease_s: float, limit: int,
                       max_attempts: int, batches: Sequence[str] | None = None) -> list[ClaimedRequest]:
        if batches is not None:  # (without them: as the store, unchecked, as before)
            # In the policy's order; a capped batch is claimed from alone, at most what its cap has left
            # pays for (budget.affordable): first in the order, or in a later claim.
            allowed: list[str] = []
            for b in batches:
                if b in self._uncapped:
                    allowed.append(b)
                    continue
                n = self._allowance(b, now, limit)
                if n == 0:
                    continue
                if b in self._uncapped:  # (found to have no cap just now)
                    allowed.append(b)
                    continue
                if not allowed:
                    return self._store.claim_runnable(models, owner, now, lease_s, n, max_attempts, [b])
                break
            if not allowed:
                return []
            batches = allowed
        return self._store.claim_runnable(models, owner, now, lease_s, limit, max_attempts, batches)

    def close_unstarted(self, batch_id: str, result: Result, include_running: bool) -> int:
        """As the store's; but the ``batch_cancelled`` lines the cancellation gives a batch that its cap
        stopped say ``budget_exceeded``: requests claimed before the stop and still waiting in their backend
        are withdrawn unsent, put back, and closed here when the batch closes (an audit found 36 of them
        labelled cancelled). Those running past the drain timeout (``include_running``) keep theirs."""
        if result.error_code == BATCH_CANCELLED and not include_running and batch_id not in self._uncapped:
            result = self._budget_result(batch_id) or result
        return self._store.close_unstarted(batch_id, result, include_running)

    def _budget_result(self, batch_id: str) -> Result | None:
        """The ``budget_exceeded`` line of a batch whose cap has stopped it (None: it has not)."""
        batch = self._store.get_batch(None, batch_id)
        cap = None if batch is None else self._cost.cap(batch)
        if batch is None or cap is None:
            return None
        spent = self._cost.cost(batch).cost_usd
        done = max(0, batch.request_counts.completed - batch.cached)
        bound = self._bound(batch)
        if spent is None or not budget.spent_out(spent, cap, done, 0, bound):
            return None
        return Result.never_ran(budget.BUDGET_EXCEEDED,
                                budget.budget_message(spent, cap, budget.unit_cost(spent, done, bound)))

    def _allowance(self, batch_id: str, now: float, limit: int) -> int:
        """How many of ``batch_id``'s requests one claim may start (``budget.affordable``); 0 once it has
        spent its cap (``budget.spent_out``), and then its unstarted requests are closed and it is cancelled."""
        # Running requests first, the cost stored second: a chunk that finishes in between is then counted
        # both as running and in the cost (a claim too small, for once). The other order counted it in
        # neither, and each such chunk let a claim start its size again past the cap.
        running = self._store.open_counts(batch_id)[1]
        batch = self._store.get_batch(None, batch_id)
        if batch is None:
            return limit
        cap = self._cost.cap(batch)
        if cap is None:
            if len(self._uncapped) >= _UNCAPPED_CACHE_MAX:
                self._uncapped.clear()
            self._uncapped.add(batch_id)
            return limit
        spent = self._cost.cost(batch).cost_usd
        c = batch.request_counts
        # The mean is over the answers that were paid for: free result-cache hits (and failures, most of which
        # cost nothing) would make it too low and let claims start more than the cap has left for.
        done = max(0, c.completed - batch.cached)
        bound = self._bound(batch)
        if not budget.spent_out(spent, cap, done, running, bound):
            return budget.affordable(spent, cap, done, limit, running, bound)
        if batch.status is not BatchStatus.IN_PROGRESS:
            return limit  # (nothing is claimed from it anyway)
        assert spent is not None
        message = budget.budget_message(spent, cap, budget.unit_cost(spent, done, bound))
        closed = self._store.close_unstarted(batch_id, Result.never_ran(budget.BUDGET_EXCEEDED, message), False)
        moved = self._store.set_status(batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, int(now))
        if moved is not None:
            log_transition(BatchStatus.IN_PROGRESS, moved, reason=budget.BUDGET_EXCEEDED, cost_usd=spent,
                           max_cost_usd=cap, closed=closed)
        return 0

    def _bound(self, batch: Batch) -> float | None:
        if batch.id not in self._bounds:
            if len(self._bounds) >= _UNCAPPED_CACHE_MAX:
                self._bounds.clear()
            f = self._store.get_file(batch.project, batch.input_file_id)
            self._bounds[batch.id] = None if f is None else self._cost.largest_request_usd(batch, f)
        return self._bounds[batch.id]
