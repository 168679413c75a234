"""Time windows (off-peak hours): when a model runs batch work, and when a batch that asks for off-peak
hours or gives ``not_before`` may start (docs/scheduling.md). Pure: the caller gives the time.

A window is ``"HH:MM-HH:MM"`` in a time zone (UTC by default); one whose end is not after its start
runs past midnight (``"22:00-06:00"``). No windows means always open. Local times follow the zone's
daylight-saving changes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
    has passed, the model's windows are open and (for an off-peak batch) an off-peak window is open."""
    t = now
    for _ in range(16):  # each step moves to the next opening of one of them; they agree within a few
        moved = max(t, not_before or t, next_open(model, t, model_tz),
                    next_open(off_peak or (), t, off_peak_tz))
        if moved == t:
            break
        t = moved
    return None if t <= now else t
