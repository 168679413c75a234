"""What a person watching batches needs beyond the Batch object (the dashboard, freight/api/dashboard):
failures grouped by error code with examples, the queue of a batch, and throughput and queue depth
per model across a project's running batches.

Everything is read through the store's ports: failed results by ``failed_results`` (the error
file's lines so far), queue depth by ``open_counts`` (the open-requests index), never a scan of a
batch's successful answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freight.domain.batches import Batch, BatchStatus
from freight.domain.requests import Result
from freight.ports import Store
from freight.services.cost import CostControls
from freight.wire import jsonx

#: Failed results read per page, and at most this many in all for one summary (the rest are counted
#: on the Batch object but not grouped).
FAILURE_PAGE = 1000
MAX_FAILURES_READ = 20_000
EXAMPLES_PER_CODE = 3
MESSAGE_CHARS = 500


@dataclass
class FailureGroup:
    code: str
    count: int = 0
    #: (custom_id, message) of the first few.
    examples: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class FailureSummary:
    groups: list[FailureGroup]
    #: Failed requests read (less than the batch's failed count only when MAX_FAILURES_READ was hit).
    read: int
    truncated: bool


def failure_code(result: Result) -> tuple[str, str]:
    """The error code and message of a failed result, as its error line shows them: ``error.code`` for
    a request that got no answer; else the answer body's ``error.code`` (or ``type``), else ``http_<status>``."""
    if result.error_code is not None:
        return result.error_code, result.error_message or ""
    code, message = f"http_{result.status_code}", ""
    try:
        body = jsonx.loads(result.body) if result.body else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        named = error.get("code") or error.get("type")
        if isinstance(named, str) and named:
            code = named
        if isinstance(error.get("message"), str):
            message = error["message"]
    elif result.body:
        message = result.body[:MESSAGE_CHARS].decode(errors="replace")
    return code, message


def failures(store: Store, batch: Batch, examples: int = EXAMPLES_PER_CODE) -> FailureSummary:
    """The batch's failed requests so far, grouped by error code (most frequent first), and the
    errors of a batch that failed validation (``batch.errors``, code and line) as groups too."""
    groups: dict[str, FailureGroup] = {}

    def add(code: str, custom_id: str, message: str) -> None:
        group = groups.setdefault(code, FailureGroup(code))
        group.count += 1
        if len(group.examples) < examples:
            group.examples.append((custom_id, message[:MESSAGE_CHARS]))

    for e in batch.errors or []:
        add(e.code, "" if e.line is None else f"line {e.line}", e.message)
    read, after, truncated = 0, -1, False
    if batch.request_counts.failed > 0:
        while True:
            chunk = store.failed_results(batch.id, after, FAILURE_PAGE)
            for stored in chunk:
                code, message = failure_code(stored.result)
                add(code, stored.custom_id, message)
            read += len(chunk)
            if len(chunk) < FAILURE_PAGE:
                break
            if read >= MAX_FAILURES_READ:
                truncated = True
                break
            after = chunk[-1].idx
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.code))
    return FailureSummary(ordered, read, truncated)


@dataclass(frozen=True)
class Queue:
    queued: int
    running: int


def queue(store: Store, batch: Batch) -> Queue:
    """The batch's requests waiting and running now (0 and 0 once it has ended)."""
    if batch.is_terminal:
        return Queue(0, 0)
    queued, running = store.open_counts(batch.id)
    return Queue(queued, running)


@dataclass
class ModelLoad:
    model: str
    batches: int = 0
    requests_per_s: float = 0.0
    queued: int = 0
    running: int = 0


RUNNING = frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING,
                     BatchStatus.CANCELLING})


def model_loads(store: Store, cost: CostControls, project: str) -> list[ModelLoad]:
    """Per model, over the project's active batches: how many, their summed requests/s, and their
    requests queued and running."""
    loads: dict[str, ModelLoad] = {}
    for b in store.active_batches():
        if b.project != project or b.status not in RUNNING:
            continue
        load = loads.setdefault(b.model or "", ModelLoad(b.model or ""))
        load.batches += 1
        rate = cost.freight_object(b).get("requests_per_s")
        load.requests_per_s += float(rate or 0.0)
        q = queue(store, b)
        load.queued += q.queued
        load.running += q.running
    return sorted(loads.values(), key=lambda m: m.model)


def summary_json(summary: FailureSummary) -> dict[str, Any]:
    return {"groups": [{"code": g.code, "count": g.count,
                        "examples": [{"custom_id": c, "message": m} for c, m in g.examples]}
                       for g in summary.groups],
            "read": summary.read, "truncated": summary.truncated}
