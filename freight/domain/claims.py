"""What a claim does with each candidate request, and how stored results move a batch's counters.

The store finds the candidates (pending and past their backoff, or running under an expired
lease) and writes what these functions decide, each write fenced by the attempt id it read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from freight.domain.requests import WORKER_LOST, Outcome, RequestState, Result


def is_lost(state: int, attempts: int, max_attempts: int) -> bool:
    """A request whose lease expired on its last allowed attempt is closed, not run again."""
    return state == RequestState.RUNNING and attempts >= max_attempts


def worker_lost(attempts: int, max_attempts: int) -> Result:
    """The final result of a request whose worker was lost on its last allowed attempt."""
    return Result.never_ran(
        WORKER_LOST,
        f"The worker running this request was lost on its last allowed attempt ({attempts} of {max_attempts}).",
    )


@dataclass(frozen=True)
class Tally:
    """How storing some results moves a batch's counters."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    invalid_outputs: int = 0
    #: Results from the result cache, and their tokens (saved, not spent: not in the tokens above).
    cached: int = 0
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0

    @classmethod
    def of(cls, results: Iterable[Result], *, tokens: bool = True) -> Tally:
        completed = failed = tokens_in = tokens_out = invalid = cached = saved_in = saved_out = 0
        for r in results:
            invalid += r.invalid_outputs
            if r.outcome is Outcome.SUCCEEDED:
                completed += 1
            else:
                failed += 1
            if r.cached:
                cached += 1
                saved_in += r.input_tokens
                saved_out += r.output_tokens
            elif tokens:
                tokens_in += r.input_tokens
                tokens_out += r.output_tokens
        return cls(completed, failed, tokens_in, tokens_out, invalid, cached, saved_in, saved_out)

    @classmethod
    def repeated(cls, result: Result, n: int) -> Tally:
        """``n`` requests closed with the same never-ran ``result`` (tokens are not counted)."""
        if result.outcome is Outcome.SUCCEEDED:
            return cls(completed=n)
        return cls(failed=n)

    def __bool__(self) -> bool:
        return any((self.completed, self.failed, self.input_tokens, self.output_tokens, self.invalid_outputs,
                    self.cached))
