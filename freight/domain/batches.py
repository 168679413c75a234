"""The batch status machine, exactly OpenAI's (see shared/reference/batch-apis.md §2.3).

    validating ──► in_progress ──► finalizing ──► completed
        │   ╲           │    ╲
        ▼    ╲          ▼     ╲──► expired       (now ≥ expires_at: partial results kept)
      failed  ╲──► cancelling ──► cancelled      (POST …/cancel: partial results kept)

failed, completed, expired and cancelled are terminal. Every transition sets the matching
``*_at`` timestamp.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from freight.domain.errors import Conflict


class BatchStatus(enum.StrEnum):
    #: The input file is being checked and its requests persisted.
    VALIDATING = "validating"
    #: The input failed validation; ``errors`` says where.
    FAILED = "failed"
    #: Requests are being executed.
    IN_PROGRESS = "in_progress"
    #: Every request has finished; the output and error files are being written.
    FINALIZING = "finalizing"
    #: Done; results are in the output and error files.
    COMPLETED = "completed"
    #: The completion window ran out; finished requests are in the output file, the rest are
    #: ``batch_expired`` lines in the error file.
    EXPIRED = "expired"
    #: Cancel was asked for; in-flight requests are draining.
    CANCELLING = "cancelling"
    #: Cancelled; finished requests are kept, the rest are ``batch_cancelled`` lines.
    CANCELLED = "cancelled"


TERMINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
ACTIVE = frozenset(set(BatchStatus) - TERMINAL)

ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.VALIDATING: frozenset(
        {BatchStatus.IN_PROGRESS, BatchStatus.FAILED, BatchStatus.CANCELLING, BatchStatus.EXPIRED}
    ),
    BatchStatus.IN_PROGRESS: frozenset({BatchStatus.FINALIZING, BatchStatus.CANCELLING, BatchStatus.EXPIRED}),
    BatchStatus.FINALIZING: frozenset({BatchStatus.COMPLETED, BatchStatus.CANCELLING}),
    BatchStatus.CANCELLING: frozenset({BatchStatus.CANCELLED}),
    BatchStatus.FAILED: frozenset(),
    BatchStatus.COMPLETED: frozenset(),
    BatchStatus.EXPIRED: frozenset(),
    BatchStatus.CANCELLED: frozenset(),
}

#: The timestamp field set on entering each status.
TIMESTAMP_FIELD: dict[BatchStatus, str] = {
    BatchStatus.IN_PROGRESS: "in_progress_at",
    BatchStatus.FINALIZING: "finalizing_at",
    BatchStatus.COMPLETED: "completed_at",
    BatchStatus.FAILED: "failed_at",
    BatchStatus.EXPIRED: "expired_at",
    BatchStatus.CANCELLING: "cancelling_at",
    BatchStatus.CANCELLED: "cancelled_at",
}


def can_transition(src: BatchStatus, dst: BatchStatus) -> bool:
    return dst in ALLOWED[src]


def check_transition(src: BatchStatus, dst: BatchStatus) -> None:
    if not can_transition(src, dst):
        raise Conflict(f"A batch cannot go from '{src}' to '{dst}'.")


class CancelAction(enum.Enum):
    #: Move the batch to cancelling.
    CANCEL = "cancel"
    #: Already cancelling or cancelled: answer with the batch as it is.
    NOTHING = "nothing"


def cancel_action(status: BatchStatus) -> CancelAction:
    """What POST /v1/batches/{id}/cancel does in each status (409 for other terminal ones)."""
    if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return CancelAction.NOTHING
    if status in TERMINAL:
        raise Conflict(f"Cannot cancel a batch with status '{status}'.")
    return CancelAction.CANCEL


@dataclass
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def describe_problem(line: int | None, code: str, param: str | None, message: str) -> str:
    """``line N: code (param): message``, or ``file: …`` for a problem of the whole file (docs/cli.md)."""
    where = f"line {line}" if line else "file"
    return f"{where}: {code}" + (f" ({param})" if param else "") + f": {message}"


@dataclass
class BatchError:
    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def describe(self) -> str:
        return describe_problem(self.line, self.code, self.param, self.message)


@dataclass
class Batch:
    id: str
    project: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    usage: Usage = field(default_factory=Usage)
    output_expires_after_s: int | None = None
    #: ``max_cost_usd`` on create: no request starts once the batch has spent this (domain/budget.py).
    max_cost_usd: float | None = None
    #: ``output_schema`` on create: a JSON schema every answer's content, parsed as JSON, must satisfy.
    output_schema: dict[str, Any] | None = None
    #: Answers found invalid (against the request's or the batch's schema), retries included.
    invalid_outputs: int = 0
    #: Higher runs first within its project (freight/domain/scheduling.py); an extension on create.
    priority: int = 0
    #: Since when the batch is paused (it starts no new request); None when it is not.
    paused_at: int | None = None
    #: ``cache`` on create (default true): whether its requests may be answered from the result cache.
    use_cache: bool = True
    #: Requests answered from the result cache, and the tokens those answers took when first run.
    cached: int = 0
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    #: ``schedule`` on create: "off_peak" waits for ``[scheduling] off_peak`` hours; None runs when it can.
    schedule: str | None = None
    #: ``not_before`` on create (unix seconds): no request starts earlier (freight/domain/windows.py).
    not_before: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL
