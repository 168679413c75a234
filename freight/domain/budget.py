"""Spending caps: a batch's own (``max_cost_usd`` on create) and its project's (``[projects."name"]``).

The cap that applies is the lower of the two. Once a batch's cost so far reaches it (or, with none of
its requests running, what is left pays for less than one request at ``unit_cost``), no new request
of the batch starts; requests already running finish (each claim set their cost aside: ``affordable``);
the rest are closed with a ``budget_exceeded`` line
each, and the batch ends ``cancelled``. A cap the create-time estimate already exceeds is refused.
"""

from __future__ import annotations

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


def unit_cost(spent: float | None, done: int, bound: float | None = None) -> float | None:
    """What a claim sets aside for each request of a capped batch not yet paid for: the larger of the mean
    cost of the ``done`` requests paid so far and ``bound``, the largest cost any of the batch's requests
    is estimated to have from its own output limit (``max_tokens`` ...) and prompt; None while neither is
    known (nothing paid for yet, no request with a limit)."""
    mean = spent / done if spent is not None and spent > 0 and done > 0 else None
    known = [x for x in (mean, bound) if x is not None and x > 0]
    return max(known) if known else None


def spent_out(cost_usd: float | None, cap: float | None, done: int, running: int,
              bound: float | None = None) -> bool:
    """Whether a capped batch has spent its cap: its cost reached it, or, with none of its requests running,
    what is left pays for less than one request at ``unit_cost`` (starting one would carry the cost past
    the cap by most of a request)."""
    if reached(cost_usd, cap):
        return True
    if cap is None or cost_usd is None or running > 0:
        return False
    unit = unit_cost(cost_usd, done, bound)
    return unit is not None and cap - cost_usd < unit


#: What a capped batch may have running before any of its requests has cost anything (nothing to
#: take a mean from yet; free answers, such as result-cache hits, tell nothing either): one, so that
#: the cap is passed by at most one request's cost however dear its requests turn out to be (with 8, a
#: batch of $1.28 requests under a $0.60 cap spent $5.12, found by an audit).
PROBE = 1


def affordable(spent: float | None, cap: float, done: int, limit: int, running: int = 0,
               bound: float | None = None) -> int:
    """How many more requests a capped batch may start in one claim, ``running`` being in flight. Two
    limits, both on the requests started and not yet paid for (``running`` and these):

    - what the rest of the cap pays for at ``unit_cost`` (the mean paid so far, or the largest estimate
      ``bound`` if higher);
    - no more than the ``done`` requests paid for so far (``PROBE`` before any has had a cost): the
      allowance grows with the samples its mean comes from, doubling at most per round, instead of
      trusting the mean of one cheap request (one $0.00001 answer let one claim start 99 requests of
      $0.0006 under a $0.02 cap: 3x the cap, found by an audit).

    0 with none running means ``spent_out``: the batch must end, not wait. Never more than ``limit``.
    So while each request costs at most ``bound`` the cost never passes the cap (see docs/cost.md)."""
    if spent is not None and spent >= cap:
        return 0
    paid = done if spent is not None and spent > 0 else 0
    n = max(PROBE, paid) - running
    unit = unit_cost(spent, paid, bound)
    if unit is not None:
        left = cap - (spent or 0.0)
        room = left / unit
        # (compared as floats first: a tiny unit cost makes ``room`` too large for an int, or infinite)
        if room < n + running:
            n = int(room) - running
        if running == 0:  # (one exactly while a unit's cost is left: as ``spent_out`` says, not rounding)
            n = 0 if spent_out(spent or 0.0, cap, paid, running, bound) else max(n, 1)
    return max(0, min(limit, n))


def refuse_over_estimate(estimate_usd: float, cap: float, *, which: str) -> None:
    """A 400 when the estimate already exceeds the cap, saying by how much."""
    if estimate_usd > cap:
        raise InvalidInput(
            f"The estimated cost of this batch's input tokens alone (${estimate_usd:.4f}) already exceeds {which} "
            f"(${cap:.4f}) by ${estimate_usd - cap:.4f}. Raise the cap or split the batch.",
            param="max_cost_usd", code=BUDGET_EXCEEDED)


def refuse_below_one_request(largest_usd: float, cap: float, *, which: str) -> None:
    """A 400 when one request may cost more than the whole cap (its prompt and all of its output limit): the
    first claim would stop the batch (``spent_out`` with that estimate as the unit cost) before any request ran."""
    if largest_usd > cap:
        raise InvalidInput(
            f"One request of this batch may cost up to ${largest_usd:.4f} (its prompt and all of its output limit, "
            f"max_tokens or the like), more than {which} (${cap:.4f}): the batch would stop before any request "
            "ran. Raise the cap or lower the requests' output limit.", param="max_cost_usd", code=BUDGET_EXCEEDED)


def budget_message(cost_usd: float, cap: float, unit: float | None = None) -> str:
    if cost_usd < cap and unit is not None:  # (spent_out short of the cap)
        return (f"The batch's spending cap (${cap:.4f}) had ${cap - cost_usd:.4f} left (${cost_usd:.4f} spent), "
                f"less than one of its requests may cost (${unit:.4f}: the mean so far, or the largest estimate "
                "from a request's output limit), before this request started; it was not run.")
    return (f"The batch's spending cap (${cap:.4f}) was reached (${cost_usd:.4f} spent) before this request "
            "started; it was not run.")
