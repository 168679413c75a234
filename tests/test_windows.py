"""Off-peak windows and not_before (freight/domain/windows.py) and how the policy holds work for them,
on a fixed clock."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.domain.scheduling import DEFAULT_MARGIN, Candidate, Policy, order, target, urgent
from freight.domain.windows import (
    Calendar,
    Hours,
    Window,
    check_not_before,
    check_schedule,
    held_until,
    is_open,
    next_open,
    parse_window,
    zone,
)
from freight.domain.windows import hours as windows_hours

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
    # hours that never meet: never (it gave a made-up date a week on, found by an audit)
    never = held_until(noon, model=[parse_window("05:00-06:00")], off_peak=[parse_window("02:00-04:00")])
    assert never is not None and not math.isfinite(never)


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


# ---- open time, the ramp in a model's hours, and the hold policy (properties) ----------------------------

def open_seconds(hours: Hours, a: float, b: float) -> float:
    """Open time in [a, b) counted minute by minute (independent of ``intervals``)."""
    return sum(60.0 for m in range(int((b - a) // 60)) if hours.is_open(a + m * 60.0))


def test_finish_times_count_only_open_hours() -> None:
    night = Hours(tuple(NIGHT))
    noon = MIDNIGHT + 12 * H
    assert night.finish_times(noon, [0, H, 6 * H, 7 * H]) == [MIDNIGHT + 24 * H, MIDNIGHT + 25 * H,
                                                               MIDNIGHT + 30 * H, MIDNIGHT + 49 * H]
    assert Hours().finish_times(noon, [5.0, 7.0]) == [noon + 5, noon + 7], "no windows: always open"
    assert Hours((parse_window("23:00-01:00"), parse_window("00:30-02:00"))).finish_times(
        MIDNIGHT, [H, 2 * H, 3 * H + 1]) == [MIDNIGHT + H, MIDNIGHT + 2 * H, MIDNIGHT + 24 * H + 1], "merged"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["00:00-06:00", "22:00-02:00", "12:30-13:00", "05:00-09:00"]), min_size=1,
                max_size=2), st.integers(0, 2 * 1440).map(lambda m: MIDNIGHT + m * 60.0),
       st.integers(0, 20 * 60).map(lambda m: m * 60.0))
def test_finish_time_is_when_that_much_open_time_has_passed(texts: list[str], now: float, demand: float) -> None:
    hours = windows_hours(texts)
    (t,) = hours.finish_times(now, [demand])
    assert open_seconds(hours, now, t) == demand
    assert demand == 0 or hours.is_open(t - 60), "it ends in open time"


candidates = st.lists(st.builds(
    Candidate, id=st.uuids().map(str), project=st.sampled_from("abc"), priority=st.integers(-3, 3),
    created_at=st.floats(MIDNIGHT - 86400, MIDNIGHT), expires_at=st.floats(MIDNIGHT, MIDNIGHT + 3 * 86400),
    remaining=st.integers(0, 3000), paused=st.booleans(),
    held_until=st.one_of(st.none(), st.floats(MIDNIGHT - H, MIDNIGHT + 2 * 86400))),
    max_size=12, unique_by=lambda c: c.id)
model_hours = st.sampled_from([Hours(), Hours(tuple(NIGHT)), Hours((parse_window("08:00-20:00"),))])


@settings(max_examples=150, deadline=None)
@given(candidates, model_hours, st.floats(0, 2 * 86400), st.floats(0.5, 30), st.integers(1, 4))
def test_held_work_runs_only_when_the_ramp_demands_it_and_nothing_runs_outside_the_models_hours(
        cs: list[Candidate], hours: Hours, offset: float, spr: float, slots: int) -> None:
    now = MIDNIGHT + offset
    policy = Policy({})
    got = order(cs, {}, policy, now, spr, slots, hours)
    if not hours.is_open(now):
        assert got == [], "outside the model's hours nothing runs, urgent or not"
        return
    live = [c for c in cs if not c.paused]
    ramp = {c.id for c in urgent(live, now, spr, slots, policy.margin, hours)}
    for c in got:
        if c.held_until is not None and now < c.held_until:
            assert c.id in ramp, "held work runs before its window only when the deadline ramp demands it"
    free = {c.id for c in live if c.held_until is None or now >= c.held_until}
    assert free | ramp == {c.id for c in got}, "every batch not held (or urgent) runs in the model's hours"


@settings(max_examples=80, deadline=None)
@given(st.integers(100, 5000), st.floats(2 * H, 30 * H), st.floats(0, 20 * H))
def test_the_ramp_in_a_models_hours_starts_a_batch_while_the_open_time_left_still_fits_it(
        remaining: int, window: float, offset: float) -> None:
    hours = Hours(tuple(NIGHT))
    created = MIDNIGHT - 18 * H  # 06:00 the day before: closed until midnight
    c = Candidate("b", "p", 0, created, created + window, remaining)
    now = created + offset
    due = target(c, DEFAULT_MARGIN)
    is_urgent = bool(urgent([c], now, 1.0, 1, DEFAULT_MARGIN, hours))
    left = open_seconds(hours, now, due) if due > now else 0.0
    if now < c.expires_at:
        # urgent exactly when the open hours left before its target no longer hold its work (to a few minutes)
        if left >= remaining + 180:
            assert not is_urgent
        if left <= remaining - 180:
            assert is_urgent


def test_calendar_holds_and_checks() -> None:
    night = Hours(tuple(NIGHT))
    cal = Calendar({"m": night}, off_peak=Hours((parse_window("02:00-05:00"),)))
    noon = MIDNIGHT + 12 * H
    assert cal.held_until(noon, model="m", schedule=None, not_before=None) == MIDNIGHT + 24 * H
    assert cal.held_until(noon, model="m", schedule="off_peak", not_before=None) == MIDNIGHT + 26 * H
    assert cal.held_until(noon, model="other", schedule=None, not_before=noon + 60) == noon + 60
    assert cal.held_until(noon, model=None, schedule=None, not_before=None) is None
    assert cal.starts_at(noon, model="other", schedule=None, not_before=None) == noon
    assert check_schedule("off_peak", cal.off_peak) == "off_peak" and check_schedule(None, None) is None
    for bad, off_peak, error in (("peak", cal.off_peak, ValueError), (3, cal.off_peak, TypeError),
                                 ("off_peak", None, ValueError)):
        with pytest.raises(error, match="schedule"):
            check_schedule(bad, off_peak)
    n = int(noon)
    assert check_not_before(n + 5, n + 100) == n + 5 and check_not_before(None, n) is None
    for bad, error in ((n + 100, ValueError), (-1, ValueError), (1.5, TypeError), ("soon", TypeError),
                       (True, TypeError)):
        with pytest.raises(error, match="not_before"):
            check_not_before(bad, n + 100)


def test_price_windows_price_the_window_work_runs_in(tmp_path: Path) -> None:
    from freight.config import load_settings
    from freight.domain.errors import ConfigError
    from freight.domain.pricing import Tokens

    path = tmp_path / "freight.toml"
    path.write_text("""
[scheduling]
off_peak = ["01:00-05:00"]
off_peak_timezone = "UTC"

[models."m"]
backend = "scripted"
windows = ["00:00-06:00", "20:00-22:00"]
timezone = "Europe/Paris"
price = { input_per_mtok = 10, output_per_mtok = 20 }
price_windows = [{ window = "00:00-06:00", input_per_mtok = 2, output_per_mtok = 4 }]
""")
    s = load_settings(path, env={})
    assert "windows" not in s.models["m"] and "price_windows" not in s.models["m"], "not backend options"
    cal = s.engine.scheduling.calendar
    assert cal.off_peak is not None and cal.model("m").windows == (parse_window("00:00-06:00"),
                                                                   parse_window("20:00-22:00"))
    book = s.price_book()
    tokens = Tokens(input=1_000_000, output=1_000_000)
    paris_night = MIDNIGHT + 2 * H  # 03:00 in Paris
    assert book.for_model("m", paris_night).cost_usd(tokens) == pytest.approx(6.0)
    assert book.for_model("m", MIDNIGHT + 12 * H).cost_usd(tokens) == pytest.approx(30.0)
    assert book.for_model("m", paris_night).realtime_usd(tokens) == pytest.approx(30.0), "savings vs list price"
    starts = cal.starts_at(MIDNIGHT + 12 * H, model="m", schedule="off_peak", not_before=None)
    assert starts == MIDNIGHT + 25 * H, "01:00 UTC is 02:00 in Paris: both open"
    for bad, why in (('windows = ["night"]', "windows"), ('windows = ["00:00-06:00"]\ntimezone = "Mars/X"', "zone"),
                     ('timezone = "UTC"', "timezone only counts"),
                     ('price_windows = [{ window = "00:00-06:00" }]', "input_per_mtok"),
                     ('price_windows = [{ input_per_mtok = 1, output_per_mtok = 1 }]', "needs window"),
                     ('price_windows = { window = "00:00-06:00" }', "list of tables")):
        path.write_text(f'[models."m"]\nbackend = "scripted"\n{bad}\n')
        with pytest.raises(ConfigError, match=why):
            load_settings(path, env={})
    for bad, why in (("off_peak = []", "at least one"), ('off_peak = ["x"]', "off_peak"),
                     ('off_peak_timezone = "UTC"', "only counts")):
        path.write_text(f"[scheduling]\n{bad}\n")
        with pytest.raises(ConfigError, match=why):
            load_settings(path, env={})


def test_freight_status_shows_a_hold() -> None:
    from freight.cli.figures import freight_rows

    rows = dict(freight_rows({"freight": {"held_until": int(MIDNIGHT), "schedule": "off_peak"}}))
    assert rows["held until"].startswith("2026-03-02 00:00 UTC (off-peak hours")
    assert "held until" not in dict(freight_rows({"freight": {"held_until": None}}))
    assert "deadline may start it earlier" in rows["held until"]
    # Held only by its model's hours: the deadline ramp never overrides those (so the note must not promise it).
    hours_only = dict(freight_rows({"freight": {"held_until": int(MIDNIGHT), "schedule": None, "not_before": None}}))
    assert hours_only["held until"].endswith("(its model's hours, which its deadline does not override)")
    waiting = dict(freight_rows({"freight": {"held_until": int(MIDNIGHT), "not_before": int(MIDNIGHT)}}))
    assert "(not_before, or its model's hours; its deadline may start it earlier" in waiting["held until"]


def test_the_estimate_and_the_cap_check_use_the_price_of_the_window_a_batch_starts_in(tmp_path: Path) -> None:
    import io
    import json

    from freight.cli.estimate import estimate_file
    from freight.config import load_settings
    from freight.domain.batches import Batch, BatchStatus
    from freight.domain.clock import FixedClock
    from freight.domain.errors import InvalidInput
    from freight.domain.files import File
    from freight.services.cost import CostControls

    config = tmp_path / "freight.toml"
    config.write_text("""
[scheduling]
off_peak = ["00:00-06:00"]

[models."m"]
backend = "scripted"
price = { input_per_mtok = 10, output_per_mtok = 10 }
price_windows = [{ window = "00:00-06:00", input_per_mtok = 1, output_per_mtok = 1 }]
""")
    settings = load_settings(config, env={})
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x" * 4000}}
    data = (json.dumps(line) + "\n").encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    noon = MIDNIGHT + 12 * H
    now = estimate_file(settings, path, "/v1/embeddings", "m", now=noon)
    night = estimate_file(settings, path, "/v1/embeddings", "m", schedule="off_peak", now=noon)
    assert (now["cost_usd"], now["starts_at"], now["price_window"]) == (pytest.approx(0.01), None, False)
    assert (night["cost_usd"], night["starts_at"], night["price_window"]) == (pytest.approx(0.001),
                                                                              int(MIDNIGHT + 24 * H), True)
    cost = CostControls(settings.price_book(), FixedClock(noon), calendar=settings.engine.scheduling.calendar,
                        open_file=lambda f: io.BytesIO(data))
    f = File("file-1", "p", "in.jsonl", "batch", len(data), int(noon), lines=1)

    def batch(**extra: object) -> Batch:
        return Batch("batch_1", "p", "/v1/embeddings", f.id, "24h", BatchStatus.VALIDATING, int(noon),
                     int(noon) + 86400, max_cost_usd=0.005, **extra)  # type: ignore[arg-type]

    cost.admit(batch(schedule="off_peak"), f)  # $0.001 at night: within the cap
    with pytest.raises(InvalidInput, match="max_cost_usd"):
        cost.admit(batch(), f)  # $0.01 now: over it
    with pytest.raises(InvalidInput):
        cost.admit(batch(not_before=int(noon) + 3600), f)  # 13:00 is no cheaper
    cost.admit(batch(not_before=int(MIDNIGHT + 25 * H)), f)
