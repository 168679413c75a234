"""Which process runs the batch steps: the holder of the ``batch-steps`` lease (``StepLeases``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from freight.domain.clock import Clock
from freight.ports import StepLeases

log = logging.getLogger("freight.engine")

#: The lease whose holder runs every batch step (engine.tick) when several processes share a store.
BATCH_STEPS = "batch-steps"


class StepHolder:
    """Takes and renews a lease (``name``: the batch steps' by default) for one engine. Without leases
    (None) the engine always holds it: it is the only one on its store."""

    def __init__(self, leases: StepLeases | None, owner: str, clock: Clock, lease_s: float, name: str = BATCH_STEPS):
        self.leases = leases
        self.name = name
        self.owner = owner
        self.clock = clock
        self.lease_s = lease_s
        self._until = 0.0
        self._next_try = 0.0
        #: How many times this engine took the lease anew (a new term: what it kept may be stale).
        self.terms = 0

    async def held(self) -> bool:
        """Whether this engine runs the batch steps now (it holds, renewed, or just took the lease)."""
        if self.leases is None:
            return True
        now = self.clock.now()
        if now < self._until - self.lease_s * 2 / 3:
            return True  # renewed less than a third of the lease ago
        if not self._until and now < self._next_try:
            return False  # another holds it: look again a third of a lease later, not on every tick
        try:
            got = await asyncio.to_thread(self.leases.acquire_lease, self.name, self.owner, now, now + self.lease_s)
        except Exception:
            log.warning("taking the %s lease failed", self.name, exc_info=True, extra={"event": "step_lease_failed"})
            got = False
        if got and not self._until:
            self.terms += 1
        self._until = now + self.lease_s if got else 0.0
        self._next_try = now + self.lease_s / 3
        return got

    async def release(self) -> None:
        """Hand the lease over at once (a stopping engine); a dead one's expires after ``lease_s``."""
        if self.leases is not None and self._until:
            self._until = 0.0
            with contextlib.suppress(Exception):  # it expires anyway
                await asyncio.to_thread(self.leases.release_lease, self.name, self.owner)
