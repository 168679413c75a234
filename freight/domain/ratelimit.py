"""Admission control for a rate-limited upstream, as values: no I/O, no sleeping, the time passed in.

A ``RateLimiter`` keeps two budgets, requests per minute and tokens per minute, each with three guards
that are all checked before a request is admitted:

1. a pacer (GCRA, i.e. a continuously refilled bucket of ``burst_s`` seconds of the rate) that spreads
   admissions evenly instead of sending a minute's budget in a burst (providers enforce limits over
   short periods too: 6,000 RPM may be 100 per second);
2. a sliding 60 s window that makes the budget a hard cap: the requests (tokens) admitted within any
   60 s never exceed ``rpm`` (``tpm``) at the moment of an admission. The window is kept in
   ``slot_s`` slices (bounded memory, conservative by at most one slice);
3. a shadow of the upstream's own bucket, fed by its ``x-ratelimit-remaining-*`` headers: when the
   upstream says less is left than we think (another client on the same key, a different way of
   counting), admissions slow down to what it says.

A request's token cost is an estimate when it is admitted (prompt + requested output); ``settle``
replaces it with the real usage once the response arrives, so unused reservations are given back
(or an overrun is charged). ``penalize`` starts a cool-down shared by every request through this
limiter (after a 429/503), so a rate-limited upstream sees one pause, not a retry storm.

``AIMD`` adapts how many requests may be in flight: additive increase on success (after a slow start
that doubles per round trip), multiplicative decrease on 429/503, always within ``[minimum, maximum]``.
Without configured limits, the limits announced in ``x-ratelimit-limit-*`` headers are adopted, and
AIMD plus the cool-downs find the sustainable rate from 429/503 feedback alone.

Reading those headers from a response is wire knowledge: ``freight.wire.ratelimit_headers``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: The span the budgets are defined over.
WINDOW_S = 60.0
#: Waits shorter than this are no wait.
_EPSILON_S = 1e-6

# ---------------------------------------------------------------------------------------------------------------------
# The three guards of one budget
# ---------------------------------------------------------------------------------------------------------------------


class _Pacer:
    """GCRA: the theoretical arrival time ``tat`` advances by ``cost / rate`` per admission; a request is
    admitted while ``tat`` is no more than ``tolerance_s`` ahead of now (debt allowed, so a request
    larger than the tolerance still goes through, once nothing else is owed)."""

    def __init__(self, per_minute: float, tolerance_s: float):
        self.rate = per_minute / WINDOW_S
        self.tolerance_s = tolerance_s
        self.tat = -math.inf

    def wait(self, now: float) -> float:
        wait = self.tat - now - self.tolerance_s
        return wait if wait > _EPSILON_S else 0.0  # below it: float rounding of the refill

    def take(self, cost: float, now: float) -> None:
        self.tat = max(self.tat, now) + cost / self.rate

    def adjust(self, delta: float) -> None:
        """Charge ``delta`` more (negative: give back)."""
        if math.isfinite(self.tat):
            self.tat += delta / self.rate


class _Window:
    """What was admitted during the last ``WINDOW_S`` seconds, in slices of ``slot_s``.

    An admission at time ``a`` in slice ``[s, s + slot_s)`` is counted until ``s + slot_s + WINDOW_S``,
    so every admission of the last 60 s is always counted (plus at most one slice more).
    """

    def __init__(self, limit: float, slot_s: float):
        self.limit = limit
        self.slot_s = slot_s
        self.slots: deque[list[float]] = deque()  # [slot index, amount]
        self.by_index: dict[int, list[float]] = {}
        self.total = 0.0

    def expire(self, now: float) -> None:
        while self.slots and (self.slots[0][0] + 1) * self.slot_s + WINDOW_S <= now:
            index, amount = self.slots.popleft()
            del self.by_index[int(index)]
            self.total -= amount
        if not self.slots:
            self.total = 0.0  # no float drift once empty

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` more fits (``inf`` if it never can)."""
        if cost > self.limit:
            return math.inf
        excess = self.total + cost - self.limit
        if excess <= 1e-9:
            return 0.0
        freed = 0.0
        for index, amount in self.slots:
            freed += amount
            if freed >= excess - 1e-9:
                # Never a wait so short that ``now + wait`` rounds back to ``now``.
                return max(_EPSILON_S, (index + 1) * self.slot_s + WINDOW_S - now)
        return math.inf  # unreachable: the slots hold the whole total

    def take(self, cost: float, now: float) -> int:
        index = int(now // self.slot_s)
        cell = self.by_index.get(index)
        if cell is None:
            cell = [float(index), 0.0]
            self.slots.append(cell)
            self.by_index[index] = cell
        cell[1] += cost
        self.total += cost
        return index

    def adjust(self, index: int, delta: float) -> None:
        cell = self.by_index.get(index)
        if cell is None:
            return  # already out of the window: nothing left to correct
        delta = max(delta, -cell[1])
        cell[1] += delta
        self.total += delta


class _Shadow:
    """The upstream's own bucket as its headers describe it: ``remaining`` at the last observation,
    refilled at its rate (``limit`` per minute), debited by what we admit since."""

    def __init__(self) -> None:
        self.capacity: float | None = None
        self.level = 0.0
        self.at = 0.0
        self.seen = False

    @property
    def active(self) -> bool:
        return self.capacity is not None

    def _level(self, now: float) -> float:
        assert self.capacity is not None
        return min(self.capacity, self.level + (now - self.at) * self.capacity / WINDOW_S)

    def observe(self, remaining: float, limit: float | None, now: float) -> None:
        if limit is not None and limit > 0:
            self.capacity = max(limit, remaining)
        if self.capacity is None:
            return
        current = self._level(now) if self.seen else self.capacity
        self.seen = True
        # Headers are as old as the response: the upstream may already have counted less than we sent
        # since, never more, so only ever lower our view.
        self.level = min(current, remaining)
        self.at = now

    def wait(self, cost: float, now: float) -> float:
        if self.capacity is None:
            return 0.0
        need = min(cost, self.capacity) - self._level(now)
        wait = need * WINDOW_S / self.capacity
        return wait if wait > _EPSILON_S else 0.0

    def take(self, cost: float, now: float) -> None:
        if self.capacity is None:
            return
        self.level = self._level(now) - cost
        self.at = now

    def adjust(self, delta: float) -> None:
        if self.capacity is not None:
            self.level = min(self.capacity, self.level - delta)


class _Budget:
    """One dimension (requests or tokens): its limit, pacer, window and shadow."""

    def __init__(self, burst_s: float, slot_s: float):
        self.burst_s = burst_s
        self.slot_s = slot_s
        self.configured: float | None = None
        self.announced: float | None = None
        self.pacer: _Pacer | None = None
        self.window: _Window | None = None
        self.shadow = _Shadow()
        self.cooldown_until = -math.inf

    @property
    def limit(self) -> float | None:
        values = [v for v in (self.configured, self.announced) if v is not None]
        return min(values) if values else None

    def set_limits(self, configured: float | None = None, announced: float | None = None) -> None:
        if configured is not None:
            self.configured = configured
        if announced is not None:
            self.announced = announced
        limit = self.limit
        if limit is None:
            return
        if self.pacer is None or self.window is None:
            self.pacer = _Pacer(limit, self.burst_s)
            self.window = _Window(limit, self.slot_s)
        elif limit != self.window.limit:
            self.pacer.rate = limit / WINDOW_S
            self.window.limit = limit

    def clamp(self, cost: float) -> float:
        """A single request can never need more than the whole budget (it would never be admitted)."""
        limit = self.limit
        return min(cost, limit) if limit is not None else cost

    def wait(self, cost: float, now: float) -> float:
        waits = [self.cooldown_until - now, self.shadow.wait(cost, now)]
        if self.pacer is not None and self.window is not None:
            self.window.expire(now)
            waits += [self.pacer.wait(now), self.window.wait(cost, now)]
        return max(0.0, *waits)

    def take(self, cost: float, now: float) -> int | None:
        self.shadow.take(cost, now)
        if self.pacer is None or self.window is None:
            return None
        self.pacer.take(cost, now)
        return self.window.take(cost, now)

    def adjust(self, slot: int | None, delta: float) -> None:
        self.shadow.adjust(delta)
        if self.pacer is not None:
            self.pacer.adjust(delta)
        if self.window is not None and slot is not None:
            self.window.adjust(slot, delta)

    def used(self, now: float) -> float:
        if self.window is None:
            return 0.0
        self.window.expire(now)
        return self.window.total


# ---------------------------------------------------------------------------------------------------------------------
# The limiter
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Reservation:
    """The answer of ``RateLimiter.reserve``: admitted when ``wait_s`` is 0, else nothing was taken and
    the caller asks again after ``wait_s`` seconds."""

    id: int
    tokens: int
    at: float
    wait_s: float
    _request_slot: int | None = field(default=None, repr=False)
    _token_slot: int | None = field(default=None, repr=False)
    settled: bool = False

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0.0


class RateLimiter:
    """Requests-per-minute and tokens-per-minute admission, pure: every method takes ``now`` (seconds on
    a monotonic clock; a value smaller than one seen before counts as that one)."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        burst_s: float = 0.1,
        slot_s: float = 0.1,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 60.0,
    ):
        if burst_s < 0 or slot_s <= 0:
            raise ValueError("need burst_s >= 0 and slot_s > 0")
        self.requests = _Budget(burst_s, slot_s)
        self.tokens = _Budget(burst_s, slot_s)
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.cooldown_until = -math.inf
        self.penalties_in_a_row = 0
        self._now = -math.inf
        self._next_id = 0
        self.configure(rpm, tpm)

    def _clock(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def configure(self, rpm: float | None, tpm: float | None) -> None:
        """Set configured limits (None leaves a dimension as it is). Several users of one upstream that
        configure different limits get the smallest."""
        for budget, value in ((self.requests, rpm), (self.tokens, tpm)):
            if value is None:
                continue
            if value <= 0:
                raise ValueError("limits must be positive")
            current = budget.configured
            budget.set_limits(configured=value if current is None else min(current, value))

    @property
    def rpm(self) -> float | None:
        return self.requests.limit

    @property
    def tpm(self) -> float | None:
        return self.tokens.limit

    # ---- admission -------------------------------------------------------------------------------------------------
    def reserve(self, tokens_estimate: int, now: float) -> Reservation:
        """Admit one request expected to cost ``tokens_estimate`` tokens, or say how long to wait.

        Admitted (``wait_s == 0``): both budgets are charged now. Not admitted: nothing changes.
        """
        now = self._clock(now)
        tokens = int(self.tokens.clamp(max(0, tokens_estimate)))
        wait = max(self.cooldown_until - now, self.requests.wait(1, now), self.tokens.wait(tokens, now), 0.0)
        if wait > 0:
            return Reservation(id=-1, tokens=tokens, at=now, wait_s=wait)
        self._next_id += 1
        return Reservation(
            id=self._next_id,
            tokens=tokens,
            at=now,
            wait_s=0.0,
            _request_slot=self.requests.take(1, now),
            _token_slot=self.tokens.take(tokens, now),
        )

    def settle(self, reservation: Reservation, actual_tokens: int | None, now: float) -> None:
        """Replace the estimate by the real cost (None: keep the estimate, e.g. no usage reported).

        Unused tokens are given back to every guard; an overrun is charged. Settling twice, or a
        reservation that was not admitted, does nothing. A settled success ends a run of penalties.
        """
        self._clock(now)
        if reservation.settled or not reservation.admitted:
            return
        reservation.settled = True
        if actual_tokens is None:
            return
        self.penalties_in_a_row = 0
        # (clamped to the budget: one request cannot have used more than a minute's tokens, and an absurd
        # ``usage`` from the upstream would otherwise push every later send out for years)
        delta = self.tokens.clamp(max(0, actual_tokens)) - reservation.tokens
        if delta:
            self.tokens.adjust(reservation._token_slot, delta)

    # ---- feedback from the upstream ----------------------------------------------------------------------------------
    def penalize(self, retry_after_s: float | None, now: float) -> float:
        """A 429/503: nobody sends for ``retry_after_s`` (else a default that doubles while the upstream
        keeps refusing), at most ``max_cooldown_s`` either way (as the OpenAI SDK honours a Retry-After
        of at most 60 s: one absurd header must not stop an upstream for a day). Returns when the
        cool-down ends. Shared by every request of this limiter."""
        now = self._clock(now)
        self.penalties_in_a_row += 1
        if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s < 0:
            exponent = min(self.penalties_in_a_row - 1, 16)
            retry_after_s = self.cooldown_s * 2.0**exponent
        retry_after_s = min(self.max_cooldown_s, retry_after_s)
        self.cooldown_until = max(self.cooldown_until, now + retry_after_s)
        return self.cooldown_until

    def observe_headers(
        self,
        remaining_requests: float | None,
        remaining_tokens: float | None,
        reset_requests_s: float | None,
        reset_tokens_s: float | None,
        now: float,
        *,
        limit_requests: float | None = None,
        limit_tokens: float | None = None,
    ) -> None:
        """Feed ``x-ratelimit-*`` values of a response.

        Announced limits are adopted (the smaller of configured and announced applies); the remaining
        counts lower our view of the upstream's bucket; an exhausted budget waits for its reset.
        """
        now = self._clock(now)
        for budget, remaining, reset_s, limit in (
            (self.requests, remaining_requests, reset_requests_s, limit_requests),
            (self.tokens, remaining_tokens, reset_tokens_s, limit_tokens),
        ):
            if limit is not None and limit > 0 and limit != budget.announced:
                budget.set_limits(announced=limit)
            if remaining is None or remaining < 0:
                continue
            budget.shadow.observe(remaining, limit, now)
            # With a known limit the shadow bucket paces the refill; without one, an exhausted budget
            # waits for the announced reset.
            if not budget.shadow.active and remaining < 1 and reset_s is not None and reset_s > 0:
                budget.cooldown_until = max(budget.cooldown_until, now + min(reset_s, self.max_cooldown_s))

    # ---- what the limiter knows ------------------------------------------------------------------------------------
    def usage(self, now: float) -> tuple[float, float]:
        """(requests, tokens) charged within the current window (0 for a dimension without a limit)."""
        now = self._clock(now)
        return self.requests.used(now), self.tokens.used(now)

    def cooling_down(self, now: float) -> float:
        """Seconds left of the shared cool-down (0 when none)."""
        return max(0.0, self.cooldown_until - max(self._now, now))


# ---------------------------------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------------------------------


class AIMD:
    """How many requests may be in flight to one upstream.

    Starts at ``initial`` in slow start (+1 per success: doubling per round trip) until the first
    overload; then +``increase``/limit per success (about +1 per round trip). Only successes that found
    the limit in use grow it. An overload multiplies it by ``decrease``, at most once per ``hold_s``
    (the requests in flight when the upstream pushed back report it too: one signal, one cut).
    """

    def __init__(
        self,
        maximum: int,
        *,
        minimum: int = 1,
        initial: int | None = None,
        increase: float = 1.0,
        decrease: float = 0.5,
        hold_s: float = 1.0,
    ):
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        if not 0 < decrease < 1 or increase <= 0:
            raise ValueError("need 0 < decrease < 1 and increase > 0")
        self.minimum = minimum
        self.maximum = maximum
        self.increase = increase
        self.decrease = decrease
        self.hold_s = hold_s
        start = min(maximum, 8) if initial is None else initial
        self.limit = float(min(maximum, max(minimum, start)))
        self.slow_start = True
        self._hold_until = -math.inf

    @property
    def window(self) -> int:
        """The number of requests allowed in flight now."""
        return max(self.minimum, min(self.maximum, int(self.limit + 1e-9)))

    def set_maximum(self, maximum: int) -> None:
        self.maximum = max(self.minimum, maximum)
        self.limit = min(self.limit, float(self.maximum))

    def on_success(self, in_flight: int, now: float) -> None:
        """A response that was not an overload; ``in_flight`` counts the requests in flight when it was sent
        (itself included)."""
        if in_flight < self.window:
            return  # the limit was not what held us back: no evidence that more would work
        step = 1.0 if self.slow_start else self.increase / self.limit
        self.limit = min(float(self.maximum), self.limit + step)

    def on_overload(self, now: float) -> None:
        """A 429 or 503."""
        self.slow_start = False
        if now < self._hold_until:
            return
        self.limit = max(float(self.minimum), self.limit * self.decrease)
        self._hold_until = now + self.hold_s


class OverloadShare:
    """Whether answers that only may mean overload (a 503 without ``Retry-After``: an upstream out of
    capacity, or a server error among successes) are frequent enough to be treated as overload.

    Of the last ``window`` answers, ``threshold`` or more such answers make ``observe`` say yes: a few
    scattered 503s cost their requests a retry, not every request a cool-down; an upstream that answers
    mostly 503s is backed off from as from a 429.
    """

    def __init__(self, window: int = 20, threshold: int = 10):
        if not 1 <= threshold <= window:
            raise ValueError("need 1 <= threshold <= window")
        self.threshold = threshold
        self._recent: deque[bool] = deque(maxlen=window)
        self._count = 0

    def observe(self, ambiguous: bool) -> bool:
        """One answer (``ambiguous``: a 503 without ``Retry-After``); whether it counts as an overload."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._count -= 1
        self._recent.append(ambiguous)
        self._count += ambiguous
        return ambiguous and self._count >= self.threshold
