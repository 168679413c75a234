"""The policy of the limiter every process shares (one per upstream), as pure functions.

A remote upstream's ``rpm`` / ``tpm`` are the upstream's, not one process's: N workers that each
allowed ``rpm`` would send N times too much. So each admission is also decided by one shared state
(freight/backends/shared_limit.py keeps it in Redis and runs these rules there, atomically, in a Lua
script that is a line-by-line transcription of ``decide``; tests/test_shared_limit.py checks both
give the same answers on the same inputs).

The shared state of one upstream is three numbers, all on the store's clock (seconds):

- ``rtat`` / ``ttat``: the theoretical arrival time of the requests / tokens budget (GCRA: each
  admission moves it on by ``cost / rate``; an admission is allowed while it is at most
  ``burst_s`` ahead of now — a request larger than that still goes, once nothing else is owed);
- ``cool``: the end of the cool-down every process respects after one of them got a 429/503.

Within any interval of ``T`` seconds the budget admits at most ``rate · (T + burst_s)`` plus one
request's cost, whatever the number of processes, since they all move the same ``tat``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The span the budgets are defined over.
WINDOW_S = 60.0
#: Waits shorter than this are no wait (float rounding of ``tat``; as in freight.domain.ratelimit).
EPSILON_S = 1e-6


@dataclass(frozen=True)
class SharedState:
    rtat: float = 0.0
    ttat: float = 0.0
    cool: float = 0.0


@dataclass(frozen=True)
class Decision:
    """``wait_s`` 0: admitted, and ``state`` is what to store; otherwise nothing changes and the caller
    asks again after ``wait_s``."""

    wait_s: float
    state: SharedState

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0.0


def _gcra_wait(tat: float, now: float, per_minute: float, burst_s: float) -> float:
    if per_minute <= 0:
        return 0.0
    wait = tat - now - burst_s
    return wait if wait > EPSILON_S else 0.0


def _gcra_take(tat: float, now: float, cost: float, per_minute: float) -> float:
    if per_minute <= 0:
        return tat
    return max(tat, now) + cost * WINDOW_S / per_minute


def decide(state: SharedState, now: float, tokens: float, rpm: float, tpm: float, burst_s: float) -> Decision:
    """Admit one request costing ``tokens`` (estimated), or say how long to wait. ``rpm``/``tpm`` of 0:
    that dimension has no limit."""
    wait = max(state.cool - now, _gcra_wait(state.rtat, now, rpm, burst_s), _gcra_wait(state.ttat, now, tpm, burst_s))
    if wait > 0:
        return Decision(wait, state)
    return Decision(0.0, SharedState(_gcra_take(state.rtat, now, 1, rpm), _gcra_take(state.ttat, now, tokens, tpm),
                                     state.cool))


def settle(state: SharedState, delta_tokens: float, tpm: float) -> SharedState:
    """The real usage differs from the estimate by ``delta_tokens``: charge it (negative: give back)."""
    if tpm <= 0 or state.ttat <= 0:
        return state
    return SharedState(state.rtat, state.ttat + delta_tokens * WINDOW_S / tpm, state.cool)


def penalize(state: SharedState, now: float, retry_after_s: float) -> SharedState:
    """A 429/503 seen by any process: every process waits until ``now + retry_after_s``."""
    return SharedState(state.rtat, state.ttat, max(state.cool, now + max(0.0, retry_after_s)))
