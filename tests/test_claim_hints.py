"""ClaimHints (store/common/queue.py): where a process's next claim of a batch starts reading its pending
requests on PostgreSQL, so that a claim does not walk past the dead index entries of every request
claimed before it. Only a hint: a scan from the front follows any short claim, and one comes at least
every FULL_SCAN_EVERY_S."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from freight.domain.requests import RequestState
from freight.store.common.queue import ClaimHints

PENDING, RUNNING = int(RequestState.PENDING), int(RequestState.RUNNING)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def rows(batch: str, idxs: list[int], state: int = PENDING) -> list[tuple[Any, ...]]:
    """Rows as the claim statements return them (store/common/queue.py: BATCH_ID, IDX, STATE, ...)."""
    return [(batch, i, state, 0, None, f"c{i}", b"{}") for i in idxs]


def test_a_full_claim_moves_the_start_past_its_last_pending_request() -> None:
    hints = ClaimHints(Clock())
    assert hints.starts(["a", "b"]) == [0, 0]
    hints.claimed(["a", "b"], [0, 0], rows("a", [0, 1, 2]) + rows("a", [7], RUNNING), 4)
    assert hints.starts(["a", "b"]) == [3, 0], "b was not reached; a running request does not count"


def test_a_short_claim_sends_the_next_one_to_the_front() -> None:
    hints = ClaimHints(Clock())
    hints.claimed(["a"], [0], rows("a", [0, 1, 2, 3]), 4)
    assert hints.starts(["a"]) == [4]
    hints.claimed(["a"], [4], rows("a", [4]), 4)
    assert hints.starts(["a"]) == [0]


def test_the_front_is_read_again_at_least_every_few_seconds() -> None:
    clock = Clock()
    hints = ClaimHints(clock)
    hints.claimed(["a"], [0], rows("a", [0, 1]), 2)
    clock.t += ClaimHints.FULL_SCAN_EVERY_S / 2
    hints.claimed(["a"], [2], rows("a", [2, 3]), 2)  # (not a scan from the front: its time is kept)
    assert hints.starts(["a"]) == [4]
    clock.t += ClaimHints.FULL_SCAN_EVERY_S / 2 + 0.01
    assert hints.starts(["a"]) == [0]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 3)), max_size=40))
def test_a_start_never_passes_a_pending_request_no_claim_has_taken(steps: list[tuple[int, int, float]]) -> None:
    """A model of one batch: requests 0..N pending; each step claims up to `limit` from the hint's start
    (the store's scan), maybe puts one claimed request back; a request put back behind the start is
    claimed within FULL_SCAN_EVERY_S or after the next short claim: never lost."""
    clock = Clock()
    hints = ClaimHints(clock)
    pending = set(range(12))
    for limit_less, put_back, wait in steps:
        limit = 4 - limit_less
        (start,) = hints.starts(["a"])
        taken = sorted(i for i in pending if i >= start)[:limit]
        pending -= set(taken)
        hints.claimed(["a"], [start], rows("a", taken), limit)
        if put_back and taken:
            pending.add(taken[put_back % len(taken)])
        clock.t += wait
    # Claims with nothing else happening: each request left is taken within two scans from the front.
    for _ in range(2 + 2 * len(pending)):
        (start,) = hints.starts(["a"])
        taken = sorted(i for i in pending if i >= start)[:4]
        pending -= set(taken)
        hints.claimed(["a"], [start], rows("a", taken), 4)
    assert not pending
