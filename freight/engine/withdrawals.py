"""The withdrawals of the chunks in flight, by batch: how cancel and expiry reach requests waiting in a backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from freight.domain.batches import Batch, BatchStatus
from freight.ports import Withdrawal, current_withdrawal


class Withdrawals:
    def __init__(self) -> None:
        self._by_batch: dict[str, set[Withdrawal]] = {}

    @contextmanager
    def chunk(self, batch_id: str) -> Iterator[Withdrawal]:
        """A new withdrawal for one ``execute`` call, made current (``current_withdrawal``) in this task."""
        withdrawal = Withdrawal()
        self._by_batch.setdefault(batch_id, set()).add(withdrawal)
        token = current_withdrawal.set(withdrawal)
        try:
            yield withdrawal
        finally:
            current_withdrawal.reset(token)
            chunks = self._by_batch.get(batch_id)
            if chunks is not None:
                chunks.discard(withdrawal)
                if not chunks:
                    del self._by_batch[batch_id]

    def look(self, batch: Batch, now: float) -> None:
        """Withdraw the batch's chunks in flight when it is cancelling, past its deadline or paused."""
        chunks = self._by_batch.get(batch.id)
        if not chunks:
            return
        if batch.status is BatchStatus.CANCELLING:
            reason = "cancelled"
        elif batch.status is BatchStatus.IN_PROGRESS and now >= batch.expires_at:
            reason = "expired"
        elif batch.paused_at is not None:
            reason = "paused"  # what waits in a backend goes back to pending; running requests finish
        else:
            return
        for withdrawal in list(chunks):
            withdrawal.set(reason)
