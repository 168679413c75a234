"""Failures in a row of each batch's step, for ``StepPolicy`` (freight/domain/steps.py).

The count is in the store (``StepLeases.count_step_failure``), so that a process that takes the
batch-steps lease over goes on counting where the last holder stopped: a batch whose validation
keeps failing is given up after ``step_max_tries`` failures across the whole fleet, not after that
many in each process it moves to. When the store itself is what fails (the common cause of a failing
step), the count goes on in memory meanwhile.

When to try again is kept here, in the holder's memory (a monotonic deadline): it only spaces the
retries out. A new holder tries each failing step once at once, then backs off from the stored count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from freight.ports import StepLeases

log = logging.getLogger("freight.engine")


class StepFailures:
    def __init__(self, store: StepLeases):
        self.store = store
        #: batch id -> (failures in a row, monotonic time before which its step is not tried again)
        self._local: dict[str, tuple[int, float]] = {}
        self._term: int | None = None

    async def load(self, term: int) -> None:
        """Read the counts when this process starts a new term as the steps' holder."""
        if term == self._term:
            return
        try:
            counts = await asyncio.to_thread(self.store.step_failure_counts)
        except Exception:
            log.warning("reading the step failure counts failed", exc_info=True,
                        extra={"event": "step_failures_unreadable"})
            return  # tried again on the next tick
        self._local = {batch_id: (n, 0.0) for batch_id, n in counts.items()}
        self._term = term

    def waiting(self, batch_id: str) -> bool:
        """Whether the batch's step is backing off now."""
        failing = self._local.get(batch_id)
        return failing is not None and time.monotonic() < failing[1]

    async def failed(self, batch_id: str) -> int:
        """One more failure; the failures in a row, this one included."""
        known = self._local.get(batch_id, (0, 0.0))[0]
        try:
            failures = await asyncio.to_thread(self.store.count_step_failure, batch_id)
        except Exception:
            failures = known + 1
        failures = max(failures, known + 1)
        self._local[batch_id] = (failures, 0.0)
        return failures

    def defer(self, batch_id: str, delay_s: float) -> None:
        failures = self._local.get(batch_id, (1, 0.0))[0]
        self._local[batch_id] = (failures, time.monotonic() + delay_s)

    async def cleared(self, batch_id: str) -> None:
        """The step succeeded (or the batch was given up): the count starts again."""
        if self._local.pop(batch_id, None) is None:
            return
        with contextlib.suppress(Exception):  # a stale count only brings a give-up a little sooner
            await asyncio.to_thread(self.store.clear_step_failures, batch_id)

    async def forget_all_but(self, active: set[str]) -> None:
        """Drop the counts of batches no longer active (ended, or gone), here and in the store: a count
        another process left (it died, or the step then succeeded here without failing) stays no longer."""
        for batch_id in [b for b in self._local if b not in active]:
            del self._local[batch_id]
        stored = await asyncio.to_thread(self.store.step_failure_counts)
        for batch_id in stored:
            if batch_id not in active:
                await asyncio.to_thread(self.store.clear_step_failures, batch_id)
