"""Failures that repeat, logged without flooding the log.

A failure that repeats on every tick (a full disk makes every claim fail, several times a second)
is logged once with its traceback; while it keeps failing, a summary ("… repeated N times in the
last M s") at most every ``every_s``; and one "recovered" line when the same operation succeeds
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Streak:
    message: str
    first_at: float
    summary_at: float
    last_error: str
    total: int = 1
    since_summary: int = 0


class RepeatedFailures:
    """Logs each kind of repeating failure once in full, then as counts, then recovered.

    A ``key`` is ``event`` or ``event:qualifier`` (``claim_failed:model``); the event is a log field.
    """

    def __init__(self, log: logging.Logger, *, every_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic):
        self.log = log
        self.every_s = every_s
        self._monotonic = monotonic
        self._streaks: dict[str, _Streak] = {}

    def failed(self, key: str, message: str, exc: BaseException, *, level: int = logging.ERROR,
               extra: dict[str, Any] | None = None) -> None:
        """The operation ``key`` failed (again) with ``exc``; ``message`` says what failed."""
        now = self._monotonic()
        streak = self._streaks.get(key)
        fields = {"event": key.partition(":")[0], **(extra or {})}
        if streak is None:
            self._streaks[key] = _Streak(message, now, now, f"{type(exc).__name__}: {exc}")
            self.log.log(level, message, exc_info=exc, extra=fields)
            return
        streak.total += 1
        streak.since_summary += 1
        streak.last_error = f"{type(exc).__name__}: {exc}"
        if now - streak.summary_at >= self.every_s:
            self.log.log(level, "%s: repeated %d times in the last %.0f s (%d since it started %.0f s ago)%s",
                         message, streak.since_summary, now - streak.summary_at, streak.total,
                         now - streak.first_at, f"; last error: {streak.last_error}",
                         extra={**fields, "repeated": streak.since_summary, "total": streak.total})
            streak.summary_at = now
            streak.since_summary = 0

    def ok(self, *keys: str) -> None:
        """The operations ``keys`` succeeded: for each that had been failing, say once that it recovered."""
        for key in keys:
            streak = self._streaks.pop(key, None)
            if streak is not None:
                self.log.warning("%s: recovered after %d failure(s) over %.0f s", streak.message, streak.total,
                                 self._monotonic() - streak.first_at,
                                 extra={"event": key.partition(":")[0], "recovered": True, "total": streak.total})

    def failing(self, key: str) -> bool:
        return key in self._streaks
