"""A project's limits on work in the system, and the check a store runs in the insert's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from freight.domain.errors import RateLimited


@dataclass(frozen=True)
class Quota:
    """A project's limits on work in the system (None: no limit)."""

    #: Batches not yet in a terminal state.
    max_active_batches: int | None = None
    #: Requests of active batches without a result yet (a validating batch counts its input's lines).
    max_queued_requests: int | None = None


@dataclass(frozen=True)
class ActiveBatch:
    """What a project's quota counts of one of its active batches."""

    total: int
    completed: int
    failed: int
    #: The request lines of its input file (counted at upload; None when unknown).
    input_lines: int | None


def queued_requests(batches: Iterable[ActiveBatch]) -> int:
    """Requests without a result yet: a batch still validating (no total yet) counts its input's lines."""
    return sum((b.input_lines or 0) if b.total == 0 else b.total - b.completed - b.failed for b in batches)


TOO_MANY_ACTIVE_BATCHES = "too_many_active_batches"
TOO_MANY_QUEUED_REQUESTS = "too_many_queued_requests"
#: The 429s that only the project's own batches finishing can lift: asking again in a second cannot help
#: (the API tells clients not to retry them at once: ``x-should-retry: false``).
WAIT_FOR_BATCHES = frozenset({TOO_MANY_ACTIVE_BATCHES, TOO_MANY_QUEUED_REQUESTS})


def check_quota(quota: Quota, active: int, queued: int, requests: int) -> None:
    """Raise ``RateLimited`` when a project with ``active`` batches and ``queued`` requests may not
    add a batch of ``requests`` more."""
    if quota.max_active_batches is not None and active >= quota.max_active_batches:
        raise RateLimited(
            f"This project has {active} active batches, its limit (limits.max_active_batches_per_project); "
            "wait for one to finish, or cancel one, then try again.", code=TOO_MANY_ACTIVE_BATCHES)
    if quota.max_queued_requests is not None and queued + requests > quota.max_queued_requests:
        raise RateLimited(
            f"This project has {queued} requests queued; this batch's {requests} more would pass its limit of "
            f"{quota.max_queued_requests} (limits.max_queued_requests_per_project). Try again when more "
            "requests have finished.", code=TOO_MANY_QUEUED_REQUESTS)
