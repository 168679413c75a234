"""Time windows (off-peak hours): when a model runs batch work, and when a batch that asks for off-peak
hours or gives ``not_before`` may start (docs/scheduling.md). Pure: the caller gives the time.

A window is ``"HH:MM-HH:MM"`` in a time zone (UTC by default); one whose end is not after its start
runs past midnight (``"22:00-06:00"``). No windows means always open. Local times follow the zone's
daylight-saving changes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
DAY_MIN = 24 * 60


@dataclass(frozen=True)
class Window:
    #: Minutes after local midnight.
    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # past midnight (or all day when start == end)


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a window like '00:00-06:00'")
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if end > DAY_MIN:
        raise ValueError(f"{text!r}: a window ends at 24:00 at the latest")
    return Window(start, end % DAY_MIN if end == DAY_MIN and start > 0 else end)


def zone(name: str | None) -> dt.tzinfo:
    if not name or name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _minute(now: float, tz: dt.tzinfo) -> int:
    local = dt.datetime.fromtimestamp(now, tz)
    return local.hour * 60 + local.minute


def is_open(windows: Sequence[Window], now: float, tz: dt.tzinfo = dt.UTC) -> bool:
    return not windows or any(w.contains(_minute(now, tz)) for w in windows)


def next_open(windows: Sequence[Window], now: float, tz: dt.tzinfo = dt.UTC) -> float:
    """The earliest time at or after ``now`` when one of ``windows`` is open."""
    if is_open(windows, now, tz):
        return now
    today = dt.datetime.fromtimestamp(now, tz).date()
    starts = []
    for days in (0, 1, 2):
        day = today + dt.timedelta(days=days)
        for w in windows:
            local = dt.datetime(day.year, day.month, day.day, w.start // 60, w.start % 60, tzinfo=tz)
            t = local.timestamp()
            if t > now:
                starts.append(t)
    return min(starts)


def held_until(now: float, *, not_before: float | None = None, model: Sequence[Window] = (),
               model_tz: dt.tzinfo = dt.UTC, off_peak: Sequence[Window] | None = None,
               off_peak_tz: dt.tzinfo = dt.UTC) -> float | None:
    """When a batch may start: None when it may start now; else the earliest time at which ``not_before``
    has passed, the model's windows are open and (for an off-peak batch) an off-peak window is open;
    ``math.inf`` when no such time comes (a model's hours that never overlap the off-peak hours)."""
    t = now
    for _ in range(16):  # each step moves to the next opening of one of them; they agree within a few
        moved = max(t, not_before or t, next_open(model, t, model_tz),
                    next_open(off_peak or (), t, off_peak_tz))
        if moved == t:
            break
        t = moved
    else:  # (they kept moving each other on: a week and more without a common minute)
        return math.inf
    return None if t <= now else t


#: How far ahead open time is counted (a window that needs more is not met anyway).
MAX_DAYS = 400


@dataclass(frozen=True)
class Hours:
    """Windows in one time zone: a model's hours (``windows``, ``timezone``) or the off-peak hours
    (``[scheduling] off_peak``). No windows: always open."""

    windows: tuple[Window, ...] = ()
    tz: dt.tzinfo = dt.UTC

    @property
    def always(self) -> bool:
        return not self.windows

    def is_open(self, now: float) -> bool:
        return is_open(self.windows, now, self.tz)

    def next_open(self, now: float) -> float:
        return next_open(self.windows, now, self.tz)

    def intervals(self, now: float, max_days: int = MAX_DAYS) -> Iterator[tuple[float, float]]:
        """The open intervals ``[a, b)`` from ``now`` on, merged, in order, for ``max_days`` days."""
        if not self.windows:
            yield now, math.inf
            return
        today = dt.datetime.fromtimestamp(now, self.tz).date()
        current: tuple[float, float] | None = None
        for days in range(-1, max_days):
            day = today + dt.timedelta(days=days)
            spans = []
            for w in self.windows:
                start = dt.datetime(day.year, day.month, day.day, w.start // 60, w.start % 60, tzinfo=self.tz)
                end_day = day + dt.timedelta(days=1 if w.end <= w.start else 0)
                end = dt.datetime(end_day.year, end_day.month, end_day.day, w.end // 60 % 24, w.end % 60,
                                  tzinfo=self.tz)
                if w.end == DAY_MIN:  # "…-24:00": the next midnight
                    end = dt.datetime(end_day.year, end_day.month, end_day.day, tzinfo=self.tz) + dt.timedelta(days=1)
                spans.append((start.timestamp(), end.timestamp()))
            for a, b in sorted(spans):
                if b <= now:
                    continue
                a = max(a, now)
                if current is not None and a <= current[1]:
                    current = (current[0], max(current[1], b))
                    continue
                if current is not None:
                    yield current
                current = (a, b)
        if current is not None:
            yield current

    def finish_times(self, now: float, demands: Sequence[float]) -> list[float]:
        """For each of ``demands`` (seconds of work, ascending), when that much open time has passed
        from ``now``: ``now + demand`` when always open; ``inf`` beyond ``MAX_DAYS``."""
        if not self.windows:
            return [now + d for d in demands]
        out: list[float] = []
        spans = self.intervals(now)
        a, b = next(spans, (math.inf, math.inf))
        used = 0.0  # open time before the span [a, b)
        for demand in demands:
            while a != math.inf and used + (b - a) < demand:
                used += b - a
                a, b = next(spans, (math.inf, math.inf))
            out.append(math.inf if a == math.inf else a + max(0.0, demand - used))
        return out


def hours(texts: object, timezone: object = None, where: str = "windows") -> Hours:
    """``Hours`` from config values; ValueError saying what is wrong (with ``where``)."""
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where} must be a list of windows like [\"00:00-06:00\"]")
    if timezone is not None and not isinstance(timezone, str):
        raise ValueError(f"{where}: timezone must be a string like \"Europe/Berlin\"")
    try:
        parsed = tuple(parse_window(str(t)) for t in texts)
        return Hours(parsed, zone(timezone))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


#: The values of ``schedule`` on create.
OFF_PEAK = "off_peak"
SCHEDULES = (OFF_PEAK,)


@dataclass(frozen=True)
class Calendar:
    """The configured hours: each model's own (``windows``, ``timezone``) and the off-peak hours a batch
    with ``schedule: "off_peak"`` waits for (``[scheduling] off_peak``; None: not configured)."""

    models: Mapping[str, Hours] = field(default_factory=dict)
    off_peak: Hours | None = None

    def model(self, name: str | None) -> Hours:
        return self.models.get(name or "", ALWAYS)

    def batch_off_peak(self, schedule: str | None) -> Hours | None:
        return self.off_peak if schedule == OFF_PEAK else None

    def held_until(self, now: float, *, model: str | None, schedule: str | None,
                   not_before: float | None) -> float | None:
        """When a batch may start (None: now) for its model's hours, its off-peak schedule and ``not_before``."""
        hours, off_peak = self.model(model), self.batch_off_peak(schedule)
        return held_until(now, not_before=not_before, model=hours.windows, model_tz=hours.tz,
                          off_peak=None if off_peak is None else off_peak.windows,
                          off_peak_tz=dt.UTC if off_peak is None else off_peak.tz)

    def starts_at(self, now: float, *, model: str | None, schedule: str | None, not_before: float | None) -> float:
        """When the batch is expected to start: the time whose price window its estimate uses (now where it
        never would: it then waits for its deadline, when the ramp runs it whatever the hours)."""
        held = self.held_until(now, model=model, schedule=schedule, not_before=not_before)
        return now if held is None or not math.isfinite(held) else held


ALWAYS = Hours()


def check_schedule(value: object, off_peak: Hours | None) -> str | None:
    """A valid ``schedule`` (None: as soon as it can), or TypeError / ValueError with the message to send back."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("Invalid type for 'schedule': expected a string.")
    if value not in SCHEDULES:
        raise ValueError(f"Invalid 'schedule': {value!r}; supported values are: "
                         + ", ".join(repr(s) for s in SCHEDULES) + " (or null).")
    if off_peak is None:
        raise ValueError("Invalid 'schedule': this server has no off-peak hours configured "
                         "([scheduling] off_peak).")
    return value


def huge_integer(value: object) -> bool:
    """An integer too large for 64 bits, which JSON parsers read as a float (``2**70`` is out of range, not
    of the wrong type)."""
    return isinstance(value, float) and value.is_integer() and abs(value) >= 2.0**63


def check_not_before(value: object, expires_at: float) -> int | None:
    """A valid ``not_before`` (unix seconds, before the batch expires), or TypeError / ValueError with the message."""
    if value is None:
        return None
    if huge_integer(value):
        raise ValueError(f"Invalid 'not_before': {value:.0f} is not before the batch expires ({int(expires_at)}).")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("Invalid type for 'not_before': expected an integer (unix seconds).")
    if value < 0:
        raise ValueError(f"Invalid 'not_before': must be unix seconds (0 or more), got {value}.")
    if value >= expires_at:
        raise ValueError(f"Invalid 'not_before': {value} is not before the batch expires ({int(expires_at)}); "
                         "a batch held past its window could never run.")
    return value
