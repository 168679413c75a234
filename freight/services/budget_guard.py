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
from freight.domain.batches import BatchStatus
from freight.domain.requests import ClaimedRequest, Result
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim(self, batch_id: str, owner: str, now: float, lease_s: float, limit: int,
              max_attempts: int) -> list[ClaimedRequest]:
        if batch_id not in self._uncapped and self._over_budget(batch_id, now):
            return []
        return self._store.claim(batch_id, owner, now, lease_s, limit, max_attempts)

    def claim_runnable(self, models: Sequence[str], owner: str, now: float, lease_s: float, limit: int,
                       max_attempts: int, batches: Sequence[str] | None = None) -> list[ClaimedRequest]:
        if batches is not None:  # (without them: as the store, unchecked, as before)
            batches = [b for b in batches if b in self._uncapped or not self._over_budget(b, now)]
            if not batches:
                return []
        return self._store.claim_runnable(models, owner, now, lease_s, limit, max_attempts, batches)

    def _over_budget(self, batch_id: str, now: float) -> bool:
        batch = self._store.get_batch(None, batch_id)
        if batch is None:
            return False
        cap = self._cost.cap(batch)
        if cap is None:
            if len(self._uncapped) >= _UNCAPPED_CACHE_MAX:
                self._uncapped.clear()
            self._uncapped.add(batch_id)
            return False
        spent = self._cost.cost(batch).cost_usd
        if not budget.reached(spent, cap) or batch.status is not BatchStatus.IN_PROGRESS:
            return False
        assert spent is not None
        closed = self._store.close_unstarted(
            batch_id, Result.never_ran(budget.BUDGET_EXCEEDED, budget.budget_message(spent, cap)), False)
        moved = self._store.set_status(batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.CANCELLING, int(now))
        if moved is not None:
            log_transition(BatchStatus.IN_PROGRESS, moved, reason=budget.BUDGET_EXCEEDED, cost_usd=spent,
                           max_cost_usd=cap, closed=closed)
        return True
