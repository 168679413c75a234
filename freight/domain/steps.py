"""How a batch leaves a step that keeps failing, and how a batch whose window ran out ends.

The engine moves each active batch along by *steps* (validate its file, write its files, close it
after a cancel or its window). A step that raises is tried again after a backoff; this module says
how long to wait, and when to stop trying and end the batch instead:

- a step is given up after ``max_tries`` failures in a row, or, once the batch's window has
  passed, after ``tries_past_window`` (a batch that cannot be validated would otherwise stay
  ``validating``, or ``cancelling``, for ever, re-reading its file and counting against its
  project's limits);
- only steps that can end without the step's own work can be given up: validation (the batch
  ends ``failed``; after a cancel, ``cancelled`` with no requests), each with an ``internal_error``
  in ``errors`` that says what failed. Writing the output and error files cannot be skipped (the
  results would be lost): that step keeps its capped backoff.

And the rule for a batch whose window ran out (``ending_status``): a batch every request of
which has its result when it is finalized is ``completed``, whatever the clock says; ``expired``
is only for a batch that had requests left to run.
"""

from __future__ import annotations

from dataclasses import dataclass

from freight.domain.batches import BatchError, BatchStatus

#: The ``errors.data[].code`` of a batch ended because a step of freight's own kept failing.
STEP_FAILED_CODE = "internal_error"


@dataclass(frozen=True)
class StepVerdict:
    #: End the batch now (``give_up_status``) instead of trying again.
    give_up: bool
    #: Otherwise, how long to wait before the next try.
    delay_s: float


@dataclass(frozen=True)
class StepPolicy:
    #: Consecutive failures of a step after which it is given up.
    max_tries: int = 10
    #: Once the batch's window has passed, consecutive failures after which it is given up.
    tries_past_window: int = 3
    #: The wait after the first failure; it doubles with each failure up to ``max_delay_s``.
    base_delay_s: float = 0.2
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.tries_past_window < 1:
            raise ValueError("max_tries and tries_past_window must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")

    def delay_s(self, failures: int) -> float:
        exponent = min(max(0, failures - 1), 64)
        return float(min(self.max_delay_s, self.base_delay_s * 2**exponent))

    def after_failure(self, failures: int, now: float, expires_at: float | None, *, can_give_up: bool) -> StepVerdict:
        """What to do after the ``failures``-th failure in a row of a batch's step (``expires_at``: its
        window's end, None for none); ``can_give_up``: whether the step is one that can be given up."""
        past_window = expires_at is not None and now >= expires_at
        limit = self.tries_past_window if past_window else self.max_tries
        if can_give_up and failures >= limit:
            return StepVerdict(give_up=True, delay_s=0.0)
        return StepVerdict(give_up=False, delay_s=self.delay_s(failures))


def give_up_status(status: BatchStatus) -> BatchStatus:
    """Where a batch whose validation was given up ends."""
    return BatchStatus.CANCELLED if status is BatchStatus.CANCELLING else BatchStatus.FAILED


def step_failed_error(failures: int, past_window: bool, why: str) -> BatchError:
    """The ``errors.data`` entry of a batch whose validation was given up."""
    when = "its completion window had passed" if past_window else f"it failed {failures} times in a row"
    return BatchError(code=STEP_FAILED_CODE,
                      message=f"freight could not validate this batch and gave up after {failures} tries "
                              f"({when}): {why}")


def ending_status(target: BatchStatus, never_ran: int) -> BatchStatus:
    """The terminal status of a batch closed as ``target`` when it is finalized, ``never_ran`` of its
    requests having been closed without running (``batch_expired``): a batch every request of which
    has its own result is ``completed``, even when its window ran out before it was finalized."""
    if target is BatchStatus.EXPIRED and never_ran == 0:
        return BatchStatus.COMPLETED
    return target
