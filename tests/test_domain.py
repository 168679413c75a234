"""The status machine, retry arithmetic and durations, as values (no I/O, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.domain.batches import (
    ACTIVE,
    ALLOWED,
    TERMINAL,
    BatchStatus,
    CancelAction,
    can_transition,
    cancel_action,
    check_transition,
)
from freight.domain.durations import completion_window_s, parse_duration_s
from freight.domain.errors import Conflict, InvalidInput
from freight.domain.retry import RetryPolicy, is_transient_status

statuses = st.sampled_from(list(BatchStatus))


@given(st.lists(statuses, min_size=1, max_size=12))
def test_any_walk_through_allowed_transitions_never_leaves_a_terminal_state(path: list[BatchStatus]) -> None:
    current = BatchStatus.VALIDATING
    seen_terminal = False
    for nxt in path:
        if can_transition(current, nxt):
            assert not seen_terminal, "moved out of a terminal state"
            current = nxt
            seen_terminal = current in TERMINAL
        else:
            with pytest.raises(Conflict):
                check_transition(current, nxt)


@given(statuses)
def test_terminal_states_have_no_way_out(status: BatchStatus) -> None:
    assert (len(ALLOWED[status]) == 0) == (status in TERMINAL)


def test_failed_is_reachable_only_from_validating() -> None:
    sources = {s for s, targets in ALLOWED.items() if BatchStatus.FAILED in targets}
    assert sources == {BatchStatus.VALIDATING}


def test_every_active_state_can_reach_a_terminal_state() -> None:
    for start in ACTIVE:
        frontier, seen = [start], {start}
        while frontier:
            s = frontier.pop()
            for t in ALLOWED[s]:
                if t not in seen:
                    seen.add(t)
                    frontier.append(t)
        assert seen & TERMINAL, start


@given(statuses)
def test_cancel_rules_match_openai(status: BatchStatus) -> None:
    if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        assert cancel_action(status) is CancelAction.NOTHING
    elif status in TERMINAL:
        with pytest.raises(Conflict, match=f"Cannot cancel a batch with status '{status}'"):
            cancel_action(status)
    else:
        assert cancel_action(status) is CancelAction.CANCEL
        assert can_transition(status, BatchStatus.CANCELLING)


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_retry_delay_is_bounded_and_none_after_max_attempts(failed: int, r: float) -> None:
    policy = RetryPolicy(max_attempts=6, base_delay_s=0.5, max_delay_s=30)
    decision = policy.decide(failed, lambda: r)
    if failed >= policy.max_attempts:
        assert decision is None
    else:
        assert decision is not None
        step = policy.step_s(failed)
        assert step / 2 <= decision.delay_s <= step <= policy.max_delay_s


@given(st.integers(min_value=1, max_value=200))
def test_retry_step_never_decreases(n: int) -> None:
    policy = RetryPolicy(max_attempts=1000)
    assert policy.step_s(n) <= policy.step_s(n + 1)


def test_transient_statuses() -> None:
    assert all(is_transient_status(s) for s in (408, 429, 500, 502, 503, 504, 529))
    assert not any(is_transient_status(s) for s in (200, 400, 401, 403, 404, 409, 413, 422))


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("90s", 90), ("30m", 1800), ("7d", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-1h", "24 h", "1w", "１h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_completion_window_bounds_are_enforced_with_openai_error_codes() -> None:
    assert completion_window_s("24h", min_s=1, max_s=86400) == 86400
    with pytest.raises(InvalidInput) as exc:
        completion_window_s("2d", min_s=1, max_s=86400)
    assert exc.value.param == "completion_window" and exc.value.code == "invalid_value"
    with pytest.raises(InvalidInput) as exc:
        completion_window_s(24, min_s=1, max_s=86400)
    assert exc.value.code == "invalid_type"


@given(st.text(max_size=12))
def test_parse_duration_accepts_only_number_unit(text: str) -> None:
    try:
        seconds = parse_duration_s(text)
    except ValueError:
        return
    assert text[-1] in "smhd" and text[:-1].isascii() and text[:-1].isdigit()
    assert seconds >= 0
