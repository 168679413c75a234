"""What becomes of each request of a chunk the backend answered: a result to store, or a retry.

A permanent answer is stored as it is; a transient one (a failure without an answer, or a status that
``domain/retry.py`` calls transient) is retried after the policy's backoff until its attempts run out,
and then stored as the last answer (or, for a failure, an error line saying it gave up). A request the
backend never started because its batch was withdrawn goes back to pending with its attempt refunded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from freight.domain.requests import ClaimedRequest, Failure, Result
from freight.domain.retry import RetryPolicy, is_transient_status
from freight.ports import WITHDRAWN, Completion, Retry


def decide(
    claimed: Sequence[ClaimedRequest], results: Sequence[Result | Failure], retry: RetryPolicy,
    random: Callable[[], float], now: float, withdrawn: bool = False,
) -> tuple[list[Completion], list[Retry]]:
    completions: list[Completion] = []
    retries: list[Retry] = []
    for request, result in zip(claimed, results, strict=True):
        if withdrawn and isinstance(result, Failure) and result.code == WITHDRAWN:
            # never started: back to pending, its attempt not counted
            retries.append(Retry(request.idx, request.attempt_id, now, result.message, refund=True))
            continue
        transient = isinstance(result, Failure) or (
            result.status_code is not None and is_transient_status(result.status_code))
        if not transient:
            assert isinstance(result, Result)
            completions.append(Completion(request.idx, request.attempt_id, result))
            continue
        decision = retry.decide(request.attempts, random)
        why = f"{result.code}: {result.message}" if isinstance(result, Failure) else f"HTTP {result.status_code}"
        if decision is not None:
            retries.append(Retry(request.idx, request.attempt_id, now + decision.delay_s, why))
            continue
        if isinstance(result, Failure):
            final = Result.never_ran(result.code, f"{result.message} (gave up after {request.attempts} attempts)")
        else:
            final = result
        completions.append(Completion(request.idx, request.attempt_id, final))
    return completions, retries
