"""Whose turn it is to have a chunk claimed: the scheduling policy (freight/domain/scheduling.py) applied
to one backend's runnable batches (moved out of engine.py, which re-exports it).

The seam the dispatcher uses is ``order(batches)`` then ``served(batch)`` for the batch a chunk was
claimed from; ``used(batch, seconds, requests)`` (from a worker thread) records the model time a chunk
took in the store, where every process's fair share reads it. Writes and reads are made at most once a
second (``SHARES_REFRESH_S``): in between, this process counts its own chunks on top of what it read;
the last chunks before the process stops (or idles) are written with its next chunk, or never.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from freight.domain import scheduling
from freight.domain.batches import Batch
from freight.domain.clock import Clock
from freight.domain.windows import ALWAYS, Calendar, Hours
from freight.engine.settings import SchedulingSettings
from freight.ports.scheduling import SchedulingStore

log = logging.getLogger("freight.engine")
#: How often this process writes the model time its chunks used and reads every project's back.
SHARES_REFRESH_S = 1.0


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
        self._used: dict[str, float] = {}  # a snapshot of the store's, refreshed when a chunk ends
        self._in_flight: dict[str, float] = {}
        self.seconds_per_request = self._settings.initial_seconds_per_request
        self._pending: dict[str, float] = {}  # model time used by this process's chunks, not yet written
        self._flushed_at: float | None = None  # when it was last written and the shares read back

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
            seconds = max(0.0, scheduling.charged_s(seconds, requests))
            self._used[batch.project] = self._used.get(batch.project, 0.0) + seconds
            if self._store is None:
                return
            self._pending[batch.project] = self._pending.get(batch.project, 0.0) + seconds
            now = self._now()
            last = self._flushed_at
            if last is not None and last <= now < last + SHARES_REFRESH_S:
                return  # written by the first chunk to end a second or more after the last write
            pending, self._pending, self._flushed_at = self._pending, {}, now
        since = scheduling.window_start(now, self._settings.usage_window_s)
        try:
            while pending:
                project, spent = next(iter(pending.items()))
                self._store.add_usage(project, scheduling.bucket(now), spent, since)
                del pending[project]
            used = self._store.usage_since(since)
        except Exception:
            log.warning("recording model time used failed", exc_info=True, extra={"event": "usage_failed"})
            with self._lock:  # what was not written is written with the next flush
                for project, spent in pending.items():
                    self._pending[project] = self._pending.get(project, 0.0) + spent
            return
        with self._lock:  # what this process used since the flush counts on top of what was read
            for project, spent in self._pending.items():
                used[project] = used.get(project, 0.0) + spent
            self._used = used
