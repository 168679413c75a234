"""Which batch has the next chunk claimed: weighted fair share between projects, priority then deadline
within a project, and a deadline ramp that overrides both (docs/scheduling.md has the formula).

Pure policy: the engine feeds it what the store says (each project's model time used over the sliding
window, each batch's remaining requests) and a measured rate, and claims in the order it returns.

    share(p)    = used_s(p) / weight(p)                  (lower goes first; ties by project name)
    within p    : priority descending, then expires_at ascending, then the least remaining work, then
                  created_at, then id
    needed_s(b) = remaining(b) × seconds_per_request / slots
    target(b)   = created_at + margin × (expires_at − created_at)
    demand(b)   = Σ needed_s(x) over unfinished x with target(x) ≤ target(b)
    finish(b)   = the time at which demand(b) seconds of the model's open hours have passed from now
                  (now + demand(b) for a model without ``windows``)
    urgent(b)   ⇔ some d with target(d) ≥ target(b) has finish(d) ≥ target(d)  (and now < expires_at)

Urgent batches come first, earliest target first; then every other batch, project by project in share
order. Paused batches are left out, and so are batches held for an off-peak window or ``not_before``
(``held_until``) unless urgent. Outside the model's own hours nothing runs, urgent or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from freight.domain.windows import ALWAYS, Hours, huge_integer

#: The range of ``priority`` on create and on ``POST …/priority``.
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
#: The fraction of its window by which a batch should be done: past that, at the measured rate, it is urgent.
DEFAULT_MARGIN = 0.9
#: How far back model time used counts towards a project's share, and the size of one stored bucket.
DEFAULT_USAGE_WINDOW_S = 3600
USAGE_BUCKET_S = 60
#: The least model time a request is charged: requests faster than a clock can tell still count.
MIN_REQUEST_S = 0.001


@dataclass(slots=True)
class Candidate:
    """A batch as the policy sees it; never changed once made (not frozen: one is made per batch at
    every claim, and a frozen dataclass costs twice as much to build)."""

    id: str
    project: str
    priority: int
    created_at: float
    expires_at: float
    #: Requests not yet finished.
    remaining: int
    paused: bool = False
    #: Until when the batch waits for a time window or its ``not_before`` (freight/domain/windows.py);
    #: None: it may run now.
    held_until: float | None = None


@dataclass(frozen=True)
class Policy:
    #: ``[projects."name"] weight``; a project not named weighs ``default_weight``.
    weights: Mapping[str, float]
    default_weight: float = 1.0
    margin: float = DEFAULT_MARGIN

    def weight(self, project: str) -> float:
        w = self.weights.get(project, self.default_weight)
        return w if w > 0 else self.default_weight


def needed_s(c: Candidate, seconds_per_request: float, slots: int) -> float:
    """Model time the batch still needs, all slots its own, at the measured rate."""
    return c.remaining * seconds_per_request / max(1, slots)


def target(c: Candidate, margin: float) -> float:
    """When the batch should be done: ``margin`` of the way through its window."""
    return c.created_at + margin * (c.expires_at - c.created_at)


def urgent(candidates: Sequence[Candidate], now: float, seconds_per_request: float, slots: int,
           margin: float, hours: Hours | None = None) -> list[Candidate]:
    """The deadline ramp: the batches that must run now, earliest target first.

    Batches in earliest-target order (what meets every window that can be met); ``demand(b)`` is the
    model time of ``b`` and of every batch due before it, and ``finish(b)`` when that much of the
    model's open ``hours`` will have passed. When ``finish(b) ≥ target(b)``, ``b`` and every batch due
    before it are urgent: neither fair share nor waiting for an off-peak window or ``not_before``
    could still be afforded for any of them.
    """
    keyed = sorted((target(c, margin), -c.priority, c.id, c) for c in candidates
                   if c.remaining > 0 and now < c.expires_at)
    per_request = seconds_per_request / max(1, slots)
    demands, demand = [], 0.0
    for k in keyed:
        demand += k[3].remaining * per_request  # needed_s
        demands.append(demand)
    finish = (hours or ALWAYS).finish_times(now, demands)
    last = -1
    for i, k in enumerate(keyed):
        if finish[i] >= k[0]:
            last = i
    return [k[3] for k in keyed[:last + 1]]


def share(used_s: Mapping[str, float], policy: Policy, project: str) -> float:
    return used_s.get(project, 0.0) / policy.weight(project)


def order(candidates: Sequence[Candidate], used_s: Mapping[str, float], policy: Policy, now: float,
          seconds_per_request: float, slots: int = 1, hours: Hours | None = None) -> list[Candidate]:
    """Every candidate that is not paused (nor held, unless urgent), in the order to try claiming from them;
    none while the model's ``hours`` are closed."""
    if hours is not None and not hours.is_open(now):
        return []
    live = [c for c in candidates if not c.paused]
    first = urgent(live, now, seconds_per_request, slots, policy.margin, hours)  # held or not: the ramp wins
    chosen = {c.id for c in first}
    rest = [c for c in live if c.id not in chosen and (c.held_until is None or now >= c.held_until)]
    shares = {p: share(used_s, policy, p) for p in {c.project for c in rest}}
    rest.sort(key=lambda c: (shares[c.project], c.project, -c.priority, c.expires_at, c.remaining, c.created_at,
                             c.id))
    return first + rest


def charged_s(seconds: float, requests: int) -> float:
    """The model time a chunk of ``requests`` that took ``seconds`` counts towards its project's share."""
    return max(seconds, requests * MIN_REQUEST_S)


def bucket(now: float) -> int:
    """The usage bucket ``now`` falls in (its start, unix seconds)."""
    return int(now // USAGE_BUCKET_S) * USAGE_BUCKET_S


def window_start(now: float, window_s: float = DEFAULT_USAGE_WINDOW_S) -> int:
    """The first bucket that counts towards the shares at ``now``."""
    return bucket(now - window_s) + USAGE_BUCKET_S


def check_priority(value: object, param: str = "priority") -> int:
    """A valid ``priority``, or TypeError (not an integer) or ValueError (out of range) with the message."""
    if huge_integer(value):
        raise ValueError(f"Invalid '{param}': must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {value:.0f}.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid type for '{param}': expected an integer.")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"Invalid '{param}': must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {value}.")
    return value
