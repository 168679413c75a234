"""Queue intake's pure policy: flush triggers on a fixed clock, and message parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from freight.domain.intake import FlushPolicy, IntakeRequest, Pending, Rejected, flush_at, flush_reason, parse_message

POLICY = FlushPolicy(flush_size=3, flush_age_s=10, deadline_margin_s=5)


def test_size_fires_at_flush_size() -> None:
    two = [Pending(100), Pending(101)]
    assert flush_reason(POLICY, two, 101) is None
    assert flush_reason(POLICY, [*two, Pending(102)], 102) == "size"


def test_age_fires_when_the_oldest_is_flush_age_old() -> None:
    pending = [Pending(100), Pending(105)]
    assert flush_reason(POLICY, pending, 109.99) is None
    assert flush_reason(POLICY, pending, 110) == "age"
    assert flush_at(POLICY, pending) == 110


def test_deadline_fires_margin_before_the_earliest_deadline() -> None:
    pending = [Pending(100, deadline=200), Pending(101, deadline=104)]
    assert flush_reason(POLICY, pending, 98.9) is None
    assert flush_reason(POLICY, pending, 99) == "deadline"
    assert flush_at(POLICY, pending) == 99


def test_nothing_pending_never_flushes() -> None:
    assert flush_reason(POLICY, [], 1e12) is None
    assert flush_at(POLICY, []) is None


@given(st.lists(st.tuples(st.floats(0, 1000), st.none() | st.floats(0, 2000)), max_size=8),
       st.floats(0, 3000))
def test_flush_at_is_when_flush_reason_starts_to_fire(items: list[tuple[float, float | None]], now: float) -> None:
    pending = [Pending(r, d) for r, d in items]
    at = flush_at(POLICY, pending)
    reason = flush_reason(POLICY, pending, now)
    if at is None:
        assert reason is None
    elif len(pending) >= POLICY.flush_size:
        assert reason == "size"
    else:
        assert (reason is not None) == (now >= at)
        assert at <= min(p.received_at for p in pending) + POLICY.flush_age_s


def _parse(payload: object) -> IntakeRequest | Rejected:
    return parse_message(payload,  # type: ignore[arg-type]
                         message_id="m1", model="m", endpoint="/v1/chat/completions", models={"m", "other"},
                         endpoints={"/v1/chat/completions", "/v1/embeddings"})


def test_a_valid_message_becomes_a_request_with_the_default_model() -> None:
    got = _parse(b'{"body": {"messages": []}, "deadline": 12}')
    assert got == IntakeRequest("m1", "/v1/chat/completions", {"messages": [], "model": "m"}, 12.0)
    got = _parse({"body": '{"model": "other"}', "custom_id": "c", "url": "/v1/embeddings"})
    assert got == IntakeRequest("c", "/v1/embeddings", {"model": "other"}, None)


def test_poison_messages_are_rejected_with_a_code() -> None:
    assert isinstance(_parse(b"\xff not json"), Rejected)
    assert _parse(b"[1]") == Rejected("m1", "invalid_request", "The message must be a JSON object with a 'body'.")
    assert isinstance(_parse({"custom_id": "c"}), Rejected) and _parse({"custom_id": "c"}).custom_id == "c"
    assert _parse({"body": {"model": "nope"}}).code == "model_not_found"  # type: ignore[union-attr]
    assert _parse({"body": {}, "url": "/v1/files"}).code == "invalid_value"  # type: ignore[union-attr]
