"""freight.domain.ratelimit: the budgets hold in every 60 s window, reservations are corrected, AIMD stays in bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.domain.ratelimit import AIMD, WINDOW_S, OverloadShare, RateLimiter, Reservation
from freight.wire.ratelimit_headers import parse_header_duration_s, parse_retry_after_s, read_ratelimit_headers

# ---- header parsing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("20ms", 0.02), ("1s", 1.0), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m3s", 3723.0), ("2.5", 2.5), ("0", 0.0),
    ("500us", 0.0005), (" 7s ", 7.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_header_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "-1", "1x", "s", "nan", "inf", "1s2", "ms"])
def test_parse_duration_rejects(text: str | None) -> None:
    assert parse_header_duration_s(text) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after_s("3", None, 0) == 3.0
    assert parse_retry_after_s("3", "250", 0) == 0.25  # the precise one wins
    assert parse_retry_after_s(None, "1500", 0) == 1.5
    assert parse_retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", None, 1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", None, 1445412500.0) == 0.0
    assert parse_retry_after_s("garbage", "also", 0) is None
    assert parse_retry_after_s(None, None, 0) is None


def test_read_ratelimit_headers() -> None:
    assert read_ratelimit_headers({"content-type": "application/json"}) is None
    seen = read_ratelimit_headers({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "7",
                                   "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-tokens": "nan",
                                   "x-ratelimit-reset-tokens": "soon"})
    assert seen is not None
    assert (seen.limit_requests, seen.remaining_requests, seen.reset_requests_s) == (1200.0, 7.0, 360.0)
    assert (seen.remaining_tokens, seen.reset_tokens_s, seen.limit_tokens) == (None, None, None)


# ---- the budget in any window ----------------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3.0),      # time passing before the op
        st.integers(min_value=0, max_value=3_000),    # token estimate
        st.floats(min_value=0.0, max_value=1.0),      # actual/estimate when settled
        st.booleans(),                                 # settle the oldest open reservation now?
    ),
    min_size=1, max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, rpm=st.integers(1, 120), tpm=st.integers(100, 20_000), burst=st.sampled_from([0.0, 0.1, 2.0]))
def test_never_more_than_the_budget_in_any_window(
    ops: list[tuple[float, int, float, bool]], rpm: int, tpm: int, burst: float
) -> None:
    """At every admission, what was charged within the 60 s before it (settles included) fits the budget;
    and the requests admitted within any 60 s never exceed rpm."""
    limiter = RateLimiter(rpm, tpm, burst_s=burst)
    now = 0.0
    admitted: list[list[float]] = []  # [time, tokens charged now]
    open_: list[tuple[Reservation, int]] = []
    for dt, estimate, fraction, settle in ops:
        now += dt
        if settle and open_:
            reservation, index = open_.pop(0)
            actual = int(reservation.tokens * fraction)  # at most the estimate: a give-back
            limiter.settle(reservation, actual, now)
            admitted[index][1] = actual
        r = limiter.reserve(estimate, now)
        if r.admitted:
            assert r.tokens <= tpm
            admitted.append([now, r.tokens])
            open_.append((r, len(admitted) - 1))
            in_window = [t for at, t in admitted if at > now - WINDOW_S]
            assert len(in_window) <= rpm
            assert sum(in_window) <= tpm + 1e-6
        else:
            assert r.wait_s > 0
    times = [at for at, _ in admitted]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + WINDOW_S) <= rpm


@settings(max_examples=100, deadline=None)
@given(estimates=st.lists(st.integers(0, 5_000), min_size=1, max_size=60), rpm=st.integers(1, 600),
       tpm=st.integers(1_000, 100_000), gaps=st.lists(st.floats(0, 1), min_size=60, max_size=60))
def test_waiting_the_answer_admits(estimates: list[int], rpm: int, tpm: int, gaps: list[float]) -> None:
    """``wait_s`` is honest: asking again exactly that much later (nothing else happening) is admitted."""
    limiter = RateLimiter(rpm, tpm)
    now = 0.0
    for estimate, gap in zip(estimates, gaps, strict=False):
        now += gap
        r = limiter.reserve(estimate, now)
        if not r.admitted:
            assert math.isfinite(r.wait_s)
            now += r.wait_s + 1e-9
            assert limiter.reserve(estimate, now).admitted


@settings(max_examples=100, deadline=None)
@given(estimate=st.integers(1, 4_000), actual=st.integers(0, 8_000), tpm=st.integers(8_000, 50_000))
def test_settle_corrects_the_reservation(estimate: int, actual: int, tpm: int) -> None:
    limiter = RateLimiter(100, tpm)
    r = limiter.reserve(estimate, 10.0)
    assert r.admitted
    assert limiter.usage(10.0) == (1, estimate)
    limiter.settle(r, actual, 10.5)
    assert limiter.usage(10.5) == (1, actual)
    limiter.settle(r, 0, 10.6)  # settling twice changes nothing
    assert limiter.usage(10.6) == (1, actual)
    assert limiter.usage(10.0 + WINDOW_S + 1) == (0, 0)  # out of the window


def test_settle_none_keeps_the_estimate_and_a_refusal_takes_nothing() -> None:
    limiter = RateLimiter(60, 100_000, burst_s=0.0)
    r = limiter.reserve(400, 0.0)
    limiter.settle(r, None, 0.1)
    assert limiter.usage(0.1) == (1, 400)
    refused = limiter.reserve(100, 0.2)  # paced: one request per second
    assert not refused.admitted and refused.wait_s == pytest.approx(0.8)
    limiter.settle(refused, 0, 0.3)
    assert limiter.usage(0.3) == (1, 400)


def test_give_back_admits_sooner() -> None:
    """Unused tokens return to the budget: the cookbook's never-given-back estimates waste capacity."""
    def admitted_in_a_minute(give_back: bool) -> int:
        limiter = RateLimiter(None, 60_000, burst_s=0.0)
        now, count = 0.0, 0
        while now < WINDOW_S:
            r = limiter.reserve(1_000, now)  # asks for 1,000 tokens, uses 250
            if r.admitted:
                count += 1
                limiter.settle(r, 250 if give_back else None, now + 0.1)
                now += 0.01
            else:
                now += r.wait_s
        return count

    assert admitted_in_a_minute(False) <= 61
    assert admitted_in_a_minute(True) >= 3.5 * admitted_in_a_minute(False)


def test_steady_demand_gets_the_whole_budget() -> None:
    """Pacing plus the window lose almost nothing: >= 98% of rpm per minute over ten minutes."""
    limiter = RateLimiter(6_000, None)
    now, count = 0.0, 0
    while now < 600:
        r = limiter.reserve(100, now)
        if r.admitted:
            count += 1
        else:
            now += r.wait_s
    assert count >= 0.98 * 60_000
    assert count <= 60_000 + 10


def test_pacing_spreads_a_burst() -> None:
    limiter = RateLimiter(6_000, None, burst_s=0.1)  # 100/s, 10 at once
    admitted = sum(1 for _ in range(50) if limiter.reserve(1, 0.0).admitted)
    assert admitted == 11
    r = limiter.reserve(1, 0.0)
    assert r.wait_s == pytest.approx(0.01)


# ---- feedback: cool-down and headers --------------------------------------------------------------------------------


def test_penalize_is_shared_and_backs_off_without_a_hint() -> None:
    limiter = RateLimiter()  # no limits at all: only the cool-down holds requests
    assert limiter.reserve(10, 0.0).admitted
    assert limiter.penalize(2.0, 1.0) == 3.0
    assert limiter.reserve(10, 2.9).wait_s == pytest.approx(0.1)
    r = limiter.reserve(10, 3.0)
    assert r.admitted
    limiter.settle(r, 10, 3.0)  # a success ends the run of penalties
    assert limiter.penalize(None, 3.0) == pytest.approx(4.0)  # default 1 s ...
    assert limiter.penalize(None, 3.0) == pytest.approx(5.0)  # ... doubling while refused
    r = limiter.reserve(10, 5.0)
    limiter.settle(r, 10, 5.1)  # a success ends the run
    assert limiter.penalize(None, 6.0) == pytest.approx(7.0)
    assert limiter.cooling_down(6.5) == pytest.approx(0.5)


def test_an_absurd_retry_after_or_usage_cannot_stop_the_upstream_for_long() -> None:
    """Found by an audit: Retry-After 100,000 s held every request for 28 hours, and one response claiming
    10**17 tokens pushed the next send out for ever. Both are bounded now: a cool-down lasts at most
    ``max_cooldown_s``, and a request is charged at most the whole token budget."""
    limiter = RateLimiter(max_cooldown_s=60.0)
    assert limiter.penalize(100_000.0, 0.0) == 60.0
    tokens = RateLimiter(None, 100_000, burst_s=0.0)
    r = tokens.reserve(1_000, 0.0)
    tokens.settle(r, 10**17, 0.1)
    assert tokens.usage(0.1) == (0, 100_000)
    later = tokens.reserve(1_000, 0.2)
    assert not later.admitted and later.wait_s <= WINDOW_S + 1
    assert tokens.reserve(1_000, WINDOW_S + 1.0).admitted


def test_headers_announce_limits_and_lower_what_is_left() -> None:
    limiter = RateLimiter()
    limiter.observe_headers(59, 9_000, 1.0, 0.5, 0.0, limit_requests=60, limit_tokens=10_000)
    assert (limiter.rpm, limiter.tpm) == (60, 10_000)  # discovered without configuration
    # The upstream says 0 tokens left (someone else uses the key): wait for its refill, not our view.
    limiter.observe_headers(50, 0, 1.0, 6.0, 1.0, limit_requests=60, limit_tokens=10_000)
    r = limiter.reserve(500, 1.0)
    assert not r.admitted
    assert r.wait_s == pytest.approx(500 * 60 / 10_000)
    # A configured limit below the announced one stays in force.
    limiter.configure(30, None)
    assert limiter.rpm == 30


def test_exhausted_without_a_known_limit_waits_for_reset() -> None:
    limiter = RateLimiter()
    limiter.observe_headers(0, None, 2.5, None, 10.0)
    assert limiter.reserve(1, 10.0).wait_s == pytest.approx(2.5)
    assert limiter.reserve(1, 12.5).admitted


def test_configure_takes_the_smaller_limit() -> None:
    limiter = RateLimiter(600, 100_000)
    limiter.configure(300, None)
    limiter.configure(900, 50_000)
    assert (limiter.rpm, limiter.tpm) == (300, 50_000)
    with pytest.raises(ValueError):
        limiter.configure(0, None)


def test_estimates_larger_than_the_budget_are_clamped() -> None:
    limiter = RateLimiter(None, 1_000)
    r = limiter.reserve(5_000, 0.0)
    assert r.admitted and r.tokens == 1_000


# ---- AIMD -----------------------------------------------------------------------------------------------------------

aimd_ops = st.lists(st.tuples(st.sampled_from(["ok", "overload"]), st.integers(0, 300), st.floats(0, 2)),
                    max_size=300)


@settings(max_examples=200, deadline=None)
@given(ops=aimd_ops, maximum=st.integers(1, 256), minimum=st.integers(1, 8), initial=st.integers(1, 300))
def test_aimd_stays_within_bounds(ops: list[tuple[str, int, float]], maximum: int, minimum: int, initial: int) -> None:
    minimum = min(minimum, maximum)
    aimd = AIMD(maximum, minimum=minimum, initial=initial)
    now = 0.0
    for op, in_flight, dt in ops:
        now += dt
        before = aimd.limit
        if op == "ok":
            aimd.on_success(in_flight, now)
            assert aimd.limit >= before
        else:
            aimd.on_overload(now)
            assert aimd.limit <= before
        assert minimum <= aimd.window <= maximum
        assert minimum <= aimd.limit <= maximum


def test_aimd_slow_start_then_additive_and_one_cut_per_hold() -> None:
    aimd = AIMD(100, initial=4, hold_s=1.0)
    for _ in range(4):
        aimd.on_success(aimd.window, 0.0)
    assert aimd.window == 8  # slow start: +1 per success
    aimd.on_success(2, 0.0)
    assert aimd.window == 8  # not using the window: no growth
    aimd.on_overload(1.0)
    assert aimd.window == 4
    aimd.on_overload(1.5)  # same congestion event
    assert aimd.window == 4
    for _ in range(5):
        aimd.on_success(aimd.window, 2.0)
    assert aimd.window == 5  # additive: about +1 per window of successes
    aimd.on_overload(2.5)
    assert aimd.window == 2


def test_overload_share_counts_the_last_answers() -> None:
    share = OverloadShare(window=4, threshold=2)
    assert [share.observe(x) for x in (True, False, False, False)] == [False, False, False, False]
    assert share.observe(True) is False  # one in the last four
    assert share.observe(True) is True  # two
    assert share.observe(False) is False  # an answer that is not one never is
    assert [share.observe(False) for _ in range(3)] == [False] * 3
    assert share.observe(True) is False  # the old ones have left the window
    with pytest.raises(ValueError):
        OverloadShare(window=2, threshold=3)
