"""What the batch-steps holder tidies now and then (engine.tick, every ``housekeeping_interval_s`` and
whenever a batch ended): the bytes of deleted and expired files, the step-failure counts of batches
that are no longer active, and, every ``orphan_sweep_interval_s``, blobs no file refers to that are
older than ``orphan_blob_age_s`` (left by a process that died uploading or finalizing while others
ran: the start-up sweep in runtime.py only runs when a process is alone on its store). And, when any
engine stops, ``give_back``: its claims returned to pending."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from freight.domain.clock import Clock
from freight.engine.repeats import RepeatedFailures
from freight.engine.settings import EngineSettings
from freight.engine.step_failures import StepFailures
from freight.ports import BlobStore, Store
from freight.services.files import purge_files, sweep_orphan_blobs

log = logging.getLogger("freight.engine")


class Housekeeping:
    def __init__(self, store: Store, blobs: BlobStore, clock: Clock, settings: EngineSettings,
                 repeats: RepeatedFailures, failing: StepFailures):
        self.store, self.blobs, self.clock, self.settings = store, blobs, clock, settings
        self.repeats, self.failing = repeats, failing
        self._next = 0.0
        self._next_sweep = 0.0

    async def run(self, active: set[str], *, ended: bool) -> None:
        now = self.clock.now()
        if not ended and now < self._next:
            return
        self._next = now + self.settings.housekeeping_interval_s
        try:
            await asyncio.to_thread(purge_files, self.store, self.blobs, now)
            self.repeats.ok("purge_failed")
        except Exception as exc:
            self.repeats.failed("purge_failed", "removing deleted files failed", exc, level=logging.WARNING)
        with contextlib.suppress(Exception):  # a stale count is harmless: it is tried again next time
            await self.failing.forget_all_but(active)
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.settings.orphan_sweep_interval_s
        try:
            swept = await asyncio.to_thread(sweep_orphan_blobs, self.store, self.blobs,
                                            now - self.settings.orphan_blob_age_s)
            self.repeats.ok("sweep_failed")
        except Exception as exc:
            self.repeats.failed("sweep_failed", "removing orphan blobs failed", exc, level=logging.WARNING)
            return
        if swept:
            log.info("removed %d blob(s) no file refers to", swept, extra={"event": "orphan_blobs_swept",
                                                                            "blobs": swept})


def give_back(store: Store, owner: str) -> None:
    """On stopping: return the requests the engine ``owner`` still holds to pending, so that other workers take
    them now rather than after ``lease_s`` (a worker scaled down by SIGTERM). A late result of one of them is
    refused by its attempt id; a store that does not answer leaves the leases to expire, as a killed
    process's do."""
    try:
        n = store.release_leases(owner)
    except Exception as exc:
        log.warning("could not give back running requests on stopping (their leases will expire): %s", exc,
                    extra={"event": "give_back_failed"})
        return
    if n:
        log.info("gave back %d running requests on stopping", n, extra={"event": "requests_given_back", "n": n})
