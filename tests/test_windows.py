"""Off-peak windows and not_before (freight/domain/windows.py) and how the policy holds work for them,
on a fixed clock."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.domain.scheduling import Candidate, Policy, order
from freight.domain.windows import Window, held_until, is_open, next_open, parse_window, zone

MIDNIGHT = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00 UTC
H = 3600.0
NIGHT = [parse_window("00:00-06:00")]


def test_parse_windows() -> None:
    assert parse_window("00:00-06:00") == Window(0, 360)
    assert parse_window("22:00-06:00") == Window(1320, 360)
    assert parse_window("22:00-24:00").contains(23 * 60) and not parse_window("22:00-24:00").contains(0)
    for bad in ("0:00-6:00", "25:00-01:00", "00:00", "00:00-24:30", "night"):
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(ValueError, match="time zone"):
        zone("Mars/Olympus")


def test_open_and_next_open_in_utc_and_across_midnight() -> None:
    assert is_open(NIGHT, MIDNIGHT + 5 * H) and not is_open(NIGHT, MIDNIGHT + 6 * H)
    assert next_open(NIGHT, MIDNIGHT + 12 * H) == MIDNIGHT + 24 * H
    late = [parse_window("22:00-02:00")]
    assert is_open(late, MIDNIGHT + 23 * H) and is_open(late, MIDNIGHT + 1 * H)
    assert next_open(late, MIDNIGHT + 3 * H) == MIDNIGHT + 22 * H
    assert is_open([], MIDNIGHT + 12 * H), "no windows: always open"


def test_a_window_in_a_time_zone() -> None:
    paris = zone("Europe/Paris")  # UTC+1 in March before the change
    assert next_open(NIGHT, MIDNIGHT + 12 * H, paris) == MIDNIGHT + 23 * H
    assert is_open(NIGHT, MIDNIGHT + 23.5 * H, paris) and not is_open(NIGHT, MIDNIGHT + 23.5 * H)


@given(st.lists(st.builds(Window, st.integers(0, 1439), st.integers(0, 1440)), min_size=1, max_size=3),
       st.floats(0, 3 * 86400))
def test_next_open_is_open_and_nothing_earlier_is(windows: list[Window], offset: float) -> None:
    now = MIDNIGHT + offset
    t = next_open(windows, now)
    assert t >= now and is_open(windows, t)
    if t > now:  # every whole minute in between is closed
        assert not any(is_open(windows, now + m * 60.0) for m in range(int((t - now) // 60)))


def test_held_until_combines_not_before_model_windows_and_off_peak() -> None:
    noon = MIDNIGHT + 12 * H
    assert held_until(noon) is None
    assert held_until(noon, not_before=noon + H) == noon + H
    assert held_until(noon, model=NIGHT) == MIDNIGHT + 24 * H
    off_peak = [parse_window("02:00-05:00")]
    assert held_until(noon, model=NIGHT, off_peak=off_peak) == MIDNIGHT + 26 * H, "both open"
    assert held_until(noon, not_before=MIDNIGHT + 27 * H, model=NIGHT, off_peak=off_peak) == MIDNIGHT + 27 * H
    assert held_until(MIDNIGHT + 3 * H, model=NIGHT, off_peak=off_peak) is None


def test_an_off_peak_batch_waits_for_its_window_unless_its_deadline_needs_it_now() -> None:
    policy = Policy({})
    noon = MIDNIGHT + 12 * H
    wait = held_until(noon, off_peak=NIGHT)
    assert wait == MIDNIGHT + 24 * H
    relaxed = Candidate("relaxed", "p", 0, noon, noon + 7 * 86400, 100, held_until=wait)
    tight = Candidate("tight", "p", 0, noon, noon + 14 * H, 40_000, held_until=wait)  # 11 h of work by 12.6 h
    now_ready = Candidate("ready", "q", 0, noon, noon + 86400, 10)
    got = [c.id for c in order([relaxed, tight, now_ready], {}, policy, noon, 1.0)]
    assert got == ["ready"], "held work waits while the ramp allows"
    later = noon + 2 * H  # now the tight batch's 11.1 h of work no longer fits after waiting: it starts
    got = [c.id for c in order([relaxed, tight, now_ready], {}, policy, later, 1.0)]
    assert got == ["tight", "ready"]
    got = [c.id for c in order([relaxed, now_ready], {}, policy, MIDNIGHT + 24 * H, 1.0)]
    assert got == ["relaxed", "ready"], "in its window it runs"
