"""Spending caps: a batch's own (``max_cost_usd`` on create) and its project's (``[projects."name"]``).

The cap that applies is the lower of the two. Once a batch's cost so far reaches it (or, with none of
its requests running, what is left pays for less than one request at their mean cost), no new request
of the batch starts; requests already running finish (their cost may carry it a little past the
cap, never by more than one claimed chunk's); the rest are closed with a ``budget_exceeded`` line
each, and the batch ends ``cancelled``. A cap the create-time estimate already exceeds is refused.
"""

from __future__ import annotations

import math

from freight.domain.errors import InvalidInput

BUDGET_EXCEEDED = "budget_exceeded"


def effective_cap(batch_cap: float | None, project_cap: float | None) -> float | None:
    caps = [c for c in (batch_cap, project_cap) if c is not None]
    return min(caps) if caps else None


def check_cap(value: object) -> float | None:
    """``max_cost_usd`` as sent on create: absent/null, or a number of dollars more than 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("Invalid type for 'max_cost_usd': expected a number.", param="max_cost_usd",
                           code="invalid_type")
    if not value > 0:
        raise InvalidInput(f"'max_cost_usd' must be more than 0, got {value}.", param="max_cost_usd",
                           code="invalid_value")
    return float(value)


def reached(cost_usd: float | None, cap: float | None) -> bool:
    """Whether spending has reached the cap (an unknown cost never does: it is refused at create)."""
    return cap is not None and cost_usd is not None and cost_usd >= cap


def spent_out(cost_usd: float | None, cap: float | None, done: int, running: int) -> bool:
    """Whether a capped batch has spent its cap: its cost reached it, or, with none of its requests running,
    what is left pays for less than one request at the mean cost of those finished (starting one would
    carry the cost past the cap by most of a request)."""
    if reached(cost_usd, cap):
        return True
    if cap is None or cost_usd is None or cost_usd <= 0 or done <= 0 or running > 0:
        return False
    return cap - cost_usd < cost_usd / done


#: What a capped batch may have running before any of its requests has cost anything (nothing to
#: take a mean from yet; free answers, such as result-cache hits, tell nothing either): one, so that
#: the cap is passed by at most one request's cost however dear its requests turn out to be (with 8, a
#: batch of $1.28 requests under a $0.60 cap spent $5.12, found by an audit).
PROBE = 1


def affordable(spent: float | None, cap: float, done: int, limit: int, running: int = 0) -> int:
    """How many more requests a capped batch may start in one claim, ``running`` being in flight: what
    the rest of its cap pays for at the mean cost of its requests so far, less those running (0 with none
    running means ``spent_out``: the batch must end, not wait); ``PROBE`` in all before a request has had a cost.
    Never more than ``limit``. So no claim commits a batch to far more than its cap, whatever the chunk
    size (a result cache grows chunks of hits to 1,024) or the number of chunks in flight."""
    if spent is not None and spent >= cap:
        return 0
    if spent is None or spent <= 0 or done <= 0:
        n = PROBE - running
    else:
        per_request = spent / done
        room = (cap - spent) / per_request if per_request > 0 else math.inf
        # (compared as floats first: a tiny mean cost makes ``room`` too large for an int, or infinite)
        n = limit + running if not room < limit + running else int(room) - running
        if running == 0:  # (one exactly while a request's mean cost is left: as ``spent_out`` says, not rounding)
            n = 0 if spent_out(spent, cap, done, running) else max(n, 1)
    return max(0, min(limit, n))


def refuse_over_estimate(estimate_usd: float, cap: float, *, which: str) -> None:
    """A 400 when the estimate already exceeds the cap, saying by how much."""
    if estimate_usd > cap:
        raise InvalidInput(
            f"The estimated cost of this batch's input tokens alone (${estimate_usd:.4f}) already exceeds {which} "
            f"(${cap:.4f}) by ${estimate_usd - cap:.4f}. Raise the cap or split the batch.",
            param="max_cost_usd", code=BUDGET_EXCEEDED)


def budget_message(cost_usd: float, cap: float, done: int = 0) -> str:
    if cost_usd < cap and done > 0:  # (spent_out short of the cap)
        return (f"The batch's spending cap (${cap:.4f}) had ${cap - cost_usd:.4f} left (${cost_usd:.4f} spent), "
                f"less than one of its requests costs on average (${cost_usd / done:.4f}), before this request "
                "started; it was not run.")
    return (f"The batch's spending cap (${cap:.4f}) was reached (${cost_usd:.4f} spent) before this request "
            "started; it was not run.")
