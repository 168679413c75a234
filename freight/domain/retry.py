"""When to try a request again, as a value (cf. procrastinate's RetryStrategy).

The delay before attempt ``n + 1`` after ``n`` failed attempts is::

    min(max_delay_s, base_delay_s * multiplier ** (n - 1)) * (0.5 + random() / 2)

("equal jitter": never less than half the exponential step, so retries of a failing
upstream spread out without collapsing to zero).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: HTTP statuses worth retrying as they are: timeouts, rate limits and server faults.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def is_transient_status(status_code: int) -> bool:
    return status_code in TRANSIENT_STATUSES or status_code >= 500


@dataclass(frozen=True)
class RetryDecision:
    delay_s: float


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")

    def step_s(self, failed_attempts: int) -> float:
        exponent = max(0, failed_attempts - 1)
        # Cap the exponent before computing the power so huge attempt counts cannot overflow.
        if exponent > 64:
            return self.max_delay_s
        return float(min(self.max_delay_s, self.base_delay_s * self.multiplier**exponent))

    def decide(self, failed_attempts: int, random: Callable[[], float]) -> RetryDecision | None:
        """None once ``failed_attempts`` reaches ``max_attempts``; else how long to wait."""
        if failed_attempts >= self.max_attempts:
            return None
        step = self.step_s(failed_attempts)
        return RetryDecision(delay_s=step * (0.5 + random() / 2))
