"""Batches: create, look up, list and cancel. Execution is the engine's business."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freight.domain import budget, ids
from freight.domain.batches import Batch, BatchStatus, CancelAction, RequestCounts, cancel_action
from freight.domain.clock import Clock
from freight.domain.durations import completion_window_s
from freight.domain.errors import InvalidInput, NotFound
from freight.domain.files import MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S
from freight.domain.quota import TOO_MANY_QUEUED_REQUESTS
from freight.domain.windows import Calendar
from freight.ports import Page, Quota, Store
from freight.services.cost import CostControls
from freight.services.outputs import check_output_schema
from freight.services.scheduling import not_before_of, priority_of, schedule_of
from freight.services.transitions import log_transition

#: Endpoints a freight batch can target (each model says which of them it serves).
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")


def check_endpoint(endpoint: str) -> None:
    """A batch's endpoint must be one freight serves: else the ``invalid_value`` error creating the batch
    answers (``freight validate`` and ``preview`` report the same before any line is checked)."""
    if endpoint not in BATCH_ENDPOINTS:
        supported = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
        raise InvalidInput(f"Invalid value: {endpoint!r}. Supported values are: {supported}.", param="endpoint",
                           code="invalid_value")

#: The fields of a batch-create body: OpenAI's, then freight's extensions (docs/api.md). Any other is refused,
#: as OpenAI does, so that a misspelt option (``priorty``) is not silently the default.
CREATE_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after",
                 "max_cost_usd", "output_schema", "priority", "schedule", "not_before", "cache")


def check_known_fields(body: dict[str, Any]) -> None:
    for name in body:
        if name not in CREATE_FIELDS:
            raise InvalidInput(f"Unknown parameter: {name!r}.", param=str(name), code="unknown_parameter")


METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512


@dataclass(frozen=True)
class WindowLimits:
    min_s: int = 1
    max_s: int = 30 * 86400


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(param: str, expected: str, value: object) -> InvalidInput:
    return InvalidInput(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param, code="invalid_type")


def check_metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type("metadata", "an object", value)
    if len(value) > METADATA_MAX_PAIRS:
        raise InvalidInput(f"Invalid 'metadata': at most {METADATA_MAX_PAIRS} key-value pairs are allowed, "
                           f"got {len(value)}.", param="metadata", code="invalid_value")
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise InvalidInput(f"Invalid 'metadata': keys may be at most {METADATA_MAX_KEY_CHARS} characters, "
                               f"got one of {len(key)}.", param="metadata", code="invalid_value")
        if not isinstance(item, str):
            raise _wrong_type(f"metadata.{key}", "a string", item)
        if len(item) > METADATA_MAX_VALUE_CHARS:
            raise InvalidInput(f"Invalid 'metadata.{key}': values may be at most {METADATA_MAX_VALUE_CHARS} "
                               f"characters, got {len(item)}.", param=f"metadata.{key}", code="invalid_value")
    return dict(value)


def _required_str(body: dict[str, Any], name: str) -> str:
    if name not in body or body[name] is None:
        raise InvalidInput(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    value = body[name]
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def check_output_expires_after(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type("output_expires_after", "an object", value)
    for name in value:  # (as for the body's own fields: a misspelt key is not silently ignored)
        if name not in ("anchor", "seconds"):
            raise InvalidInput(f"Unknown parameter: 'output_expires_after.{name}'.",
                               param=f"output_expires_after.{name}", code="unknown_parameter")
    anchor = value.get("anchor")
    if anchor != "created_at":
        raise InvalidInput("Invalid value for 'output_expires_after.anchor': only 'created_at' is supported.",
                           param="output_expires_after.anchor", code="invalid_value")
    seconds = value.get("seconds")
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise _wrong_type("output_expires_after.seconds", "an integer", seconds)
    if not MIN_EXPIRES_AFTER_S <= seconds <= MAX_EXPIRES_AFTER_S:
        raise InvalidInput(f"'output_expires_after.seconds' must be between {MIN_EXPIRES_AFTER_S} and "
                           f"{MAX_EXPIRES_AFTER_S}.", param="output_expires_after.seconds", code="invalid_value")
    return seconds


def with_upstream_progress(store: Store, batches: list[Batch]) -> list[Batch]:
    """Batches forwarded to a provider's batch API count what its running batches report done
    (not downloaded yet) in ``request_counts`` (freight/engine/lanes.py)."""
    live = [b.id for b in batches if b.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)]
    progress = store.lane_progress(live) if live else {}
    for b in batches:
        if b.id in progress:
            ok, bad = progress[b.id]
            c = b.request_counts
            ok = min(ok, c.total - c.completed - c.failed)
            bad = min(bad, c.total - c.completed - c.failed - ok)
            b.request_counts = RequestCounts(total=c.total, completed=c.completed + ok, failed=c.failed + bad)
    return batches


class BatchService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        window: WindowLimits | None = None,
        on_change: Callable[[], None] | None = None,
        quota: Quota | None = None,
        cost: CostControls | None = None,
        calendar: Calendar | None = None,
    ):
        self.store = store
        self.clock = clock
        self.window = window or WindowLimits()
        self.quota = quota or Quota()
        self._on_change = on_change or (lambda: None)
        self.cost = cost
        self.calendar = calendar or Calendar()

    def create(self, project: str, body: object, idempotency_key: str | None = None) -> Batch:
        if idempotency_key is not None:
            # A retry of a create that succeeded gets that batch, whatever changed since.
            existing = self.store.find_batch(project, idempotency_key)
            if existing is not None:
                return existing
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.", code="invalid_request")
        check_known_fields(body)
        input_file_id = _required_str(body, "input_file_id")
        endpoint = _required_str(body, "endpoint")
        window_text = _required_str(body, "completion_window")
        check_endpoint(endpoint)
        window_s = completion_window_s(window_text, min_s=self.window.min_s, max_s=self.window.max_s)
        metadata = check_metadata(body.get("metadata"))
        output_expires_after_s = check_output_expires_after(body.get("output_expires_after"))
        max_cost_usd = budget.check_cap(body.get("max_cost_usd"))
        output_schema = check_output_schema(body.get("output_schema"))
        priority = priority_of(body.get("priority"))
        schedule = schedule_of(body.get("schedule"), self.calendar)
        now = int(self.clock.now())
        not_before = not_before_of(body.get("not_before"), now + window_s)
        use_cache = body.get("cache")
        if use_cache is None:  # (absent or null: the default, as for every optional parameter)
            use_cache = True
        elif not isinstance(use_cache, bool):
            raise InvalidInput("Invalid type for 'cache': expected a boolean.", param="cache", code="invalid_type")
        f = self.store.get_file(project, input_file_id) if ids.is_file_id(input_file_id) else None
        if f is None:
            raise InvalidInput(f"Cannot find file {input_file_id!r}, or it is not accessible with this key.",
                               param="input_file_id", code="invalid_value")
        if f.purpose != "batch":
            raise InvalidInput(f"File {input_file_id!r} has purpose '{f.purpose}'; a batch input file must have "
                               "purpose 'batch'.", param="input_file_id", code="invalid_value")
        requests = f.lines or 0
        limit = self.quota.max_queued_requests
        if limit is not None and requests > limit:
            raise InvalidInput(
                f"File {input_file_id!r} has {requests} requests; a project may have at most {limit} queued "
                "(limits.max_queued_requests_per_project). Split it into smaller batches.",
                param="input_file_id", code=TOO_MANY_QUEUED_REQUESTS)
        batch = Batch(
            id=ids.new_batch_id(),
            project=project,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=window_text,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + window_s,
            metadata=metadata,
            output_expires_after_s=output_expires_after_s,
            max_cost_usd=max_cost_usd,
            output_schema=output_schema,
            priority=priority,
            use_cache=use_cache,
            schedule=schedule,
            not_before=not_before,
        )
        if self.cost is not None:
            self.cost.admit(batch, f)
        stored = self.store.insert_batch(batch, idempotency_key, self.quota, requests)
        if stored.id == batch.id:
            log_transition(None, stored)
        self._on_change()
        return stored

    def get(self, project: str, batch_id: str) -> Batch:
        batch = self.store.get_batch(project, batch_id) if ids.is_batch_id(batch_id) else None
        if batch is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return with_upstream_progress(self.store, [batch])[0]

    def list(self, project: str, *, after: str | None, limit: int) -> Page:
        page = self.store.list_batches(project, after=after, limit=limit)
        return Page(with_upstream_progress(self.store, page.items), page.has_more)


    def cancel(self, project: str, batch_id: str) -> Batch:
        for _ in range(5):  # the engine may move the batch between our read and our write
            batch = self.get(project, batch_id)
            if cancel_action(batch.status) is CancelAction.NOTHING:
                return batch
            updated = self.store.set_status(batch.id, [batch.status], BatchStatus.CANCELLING, int(self.clock.now()))
            if updated is not None:
                log_transition(batch.status, updated)
                self._on_change()
                return with_upstream_progress(self.store, [updated])[0]  # (the counts a retrieve shows)
        return self.get(project, batch_id)
