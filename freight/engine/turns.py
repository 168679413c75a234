"""Whose turn it is to have a chunk claimed: the scheduling policy (freight/domain/scheduling.py) applied
to one backend's runnable batches (moved out of engine.py, which re-exports it).

The seam the dispatcher uses is ``order(batches)`` then ``served(batch)`` for each batch a chunk was
claimed from (``claim_in_turn``: one store call across the batches in that order);
``used(batch, seconds, requests)`` (from a worker thread) records the model time a chunk took in the
store, where every process's fair share reads it.
Writes and reads of the store's usage are made at most once a second (``SAVE_EVERY_S``) and when the
engine stops (``save``): in between, this process counts its own chunks on top of what it read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from freight.domain import scheduling
from freight.domain.batches import Batch
from freight.domain.clock import Clock
from freight.domain.requests import ClaimedRequest
from freight.domain.windows import ALWAYS, Calendar, Hours
from freight.engine.settings import SchedulingSettings
from freight.ports.queue import RequestQueue
from freight.ports.scheduling import SchedulingStore

log = logging.getLogger("freight.engine")

#: How often a process stores the model time its chunks used (two store calls): with chunks of 16 requests
#: doing it after every chunk cost more CPU than the requests themselves on I/O-bound work.
SAVE_EVERY_S = 1.0


def candidate(b: Batch, held_until: float | None = None) -> scheduling.Candidate:
    """The policy's view of a batch (``held_until``: see ``Holds``)."""
    c = b.request_counts
    # (positional: this runs for every batch at every claim)
    return scheduling.Candidate(b.id, b.project, b.priority, b.created_at, b.expires_at,
                                max(0, c.total - c.completed - c.failed), b.paused_at is not None, held_until)


class Holds:
    """Until when a batch waits for its off-peak hours (``schedule: "off_peak"``) and its ``not_before``
    (``Calendar.held_until`` without the model's hours, which the policy applies as a whole: ``order``).

    The next opening of the off-peak hours is worked out once per look, not once per batch: before
    it nothing opens, so a value found at ``t`` holds for every time from ``t`` until it. (A pure
    function of the time, remembered: nothing a second worker would need.)"""

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        self._closed: tuple[float, float] | None = None  # (from, until): off-peak hours closed in between

    def off_peak_opens(self, now: float) -> float:
        off_peak = self.calendar.off_peak
        if off_peak is None:
            return now
        if self._closed is not None and self._closed[0] <= now < self._closed[1]:
            return self._closed[1]
        opens = off_peak.next_open(now)
        self._closed = (now, opens) if opens > now else None
        return opens

    def until(self, b: Batch, now: float, opens: float) -> float | None:
        if b.schedule is None:
            return b.not_before if b.not_before is not None and b.not_before > now else None
        if b.not_before is None or b.not_before <= opens:
            return opens if opens > now else None
        return self.calendar.held_until(now, model=None, schedule=b.schedule, not_before=b.not_before)


def model_hours(calendar: Calendar, models: Sequence[str]) -> Hours:
    """The hours of a backend's model (a backend with several models: those of the first that has any)."""
    for model in models:
        hours = calendar.model(model)
        if not hours.always:
            return hours
    return ALWAYS


class FairTurns:
    """Weighted fair share between projects by model time used (stored), priority then deadline within a
    project, the deadline ramp above both; paused batches get no turn, held ones (off-peak, ``not_before``)
    only when the ramp needs them, and none at all outside the model's hours.

    Between a claim and its chunk's end the chunk counts towards its project as ``chunk`` requests at
    the measured rate, so that one dispatcher filling its slots does not serve one project only.
    """

    def __init__(self, store: SchedulingStore | None = None, settings: SchedulingSettings | None = None,
                 clock: Clock | None = None, slots: int = 1, chunk: int = 1, models: Sequence[str] = ()) -> None:
        self._store = store
        self._settings = settings or SchedulingSettings()
        self._policy = self._settings.policy()
        self._holds = Holds(self._settings.calendar)
        self._hours = model_hours(self._settings.calendar, models)
        self._now = clock.now if clock is not None else time.time
        self._slots = max(1, slots)
        self._chunk = max(1, chunk)
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # a snapshot of the store's, refreshed when used is saved
        self._unsaved: dict[str, float] = {}  # used here since the last save
        self._saved_at = float("-inf")
        self._in_flight: dict[str, float] = {}
        self.seconds_per_request = self._settings.initial_seconds_per_request

    def order(self, batches: Sequence[Batch]) -> list[Batch]:
        """The batches to try, in order (paused ones left out, held ones unless urgent; none outside the
        model's hours)."""
        by_id = {b.id: b for b in batches}
        with self._lock:
            used = dict(self._used)
            for project, seconds in self._in_flight.items():
                used[project] = used.get(project, 0.0) + seconds
        now = self._now()
        opens = self._holds.off_peak_opens(now)
        until = self._holds.until
        ordered = scheduling.order([candidate(b, until(b, now, opens)) for b in batches], used, self._policy, now,
                                   self.seconds_per_request, self._slots, self._hours)
        return [by_id[c.id] for c in ordered]

    def served(self, batch: Batch) -> None:
        with self._lock:
            self._in_flight[batch.project] = (self._in_flight.get(batch.project, 0.0)
                                              + self._chunk * self.seconds_per_request)

    def used(self, batch: Batch, seconds: float, requests: int) -> None:
        """A chunk of ``requests`` from ``batch`` took ``seconds``: counted here at once, stored (and the
        shares read back) at most once a second."""
        with self._lock:
            left = self._in_flight.get(batch.project, 0.0) - self._chunk * self.seconds_per_request
            if left > 1e-9:
                self._in_flight[batch.project] = left
            else:
                self._in_flight.pop(batch.project, None)
            if requests > 0:
                # Seconds of one slot per request: a moving average of what chunks took.
                self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * seconds / requests
            seconds = scheduling.charged_s(seconds, requests)
        with self._lock:
            self._used[batch.project] = self._used.get(batch.project, 0.0) + max(0.0, seconds)
            if self._store is None:
                return
            self._unsaved[batch.project] = self._unsaved.get(batch.project, 0.0) + seconds
            if self._now() < self._saved_at + SAVE_EVERY_S:
                return  # this process sees it at once (above); the store gets it with the next save
        self.save()

    def save(self) -> None:
        """Store the model time used since the last save, and refresh the snapshot from the store (every
        process's): at most every ``SAVE_EVERY_S`` from ``used``, and when the engine stops."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, {}
            self._saved_at = now = self._now()
        if self._store is None:
            return
        since = scheduling.window_start(now, self._settings.usage_window_s)
        try:
            for project, seconds in unsaved.items():
                self._store.add_usage(project, scheduling.bucket(now), seconds, since)
            used = self._store.usage_since(since)
        except Exception:
            log.warning("recording model time used failed", exc_info=True, extra={"event": "usage_failed"})
            with self._lock:  # what was not written is written with the next save
                for project, spent in unsaved.items():
                    self._unsaved[project] = self._unsaved.get(project, 0.0) + spent
            return
        with self._lock:  # what this process used since the save counts on top of what was read
            for project, spent in self._unsaved.items():
                used[project] = used.get(project, 0.0) + spent
            self._used = used


def claim_in_turn(queue: RequestQueue, turns: FairTurns, candidates: Sequence[Batch], owner: str, now: float,
                  lease_s: float, chunk: int, max_attempts: int) -> list[tuple[Batch, list[ClaimedRequest]]]:
    """One chunk claimed across the candidates in the policy's order, in one store call (one query):
    the first batch's runnable requests, then the next one's, up to ``chunk``; by batch, in that order."""
    # Nothing new starts once a batch's window has passed: the engine's tick expires it.
    ordered = [b for b in turns.order(candidates) if now < b.expires_at]
    if not ordered:
        return []
    models = sorted({b.model for b in ordered if b.model})
    claimed = queue.claim_runnable(models, owner, now, lease_s, chunk, max_attempts, [b.id for b in ordered])
    by_id = {b.id: b for b in ordered}
    groups: dict[str, list[ClaimedRequest]] = {}
    for request in claimed:
        groups.setdefault(request.batch_id, []).append(request)
    got = [(by_id[batch_id], requests) for batch_id, requests in groups.items()]
    for batch, _ in got:
        turns.served(batch)
    return got
