"""Pause, resume and reprioritise a batch (docs/scheduling.md): the same for OpenAI batches and
Anthropic Message Batches, project-isolated (another project's batch is not found)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

from freight.domain import ids, scheduling, windows
from freight.domain.batches import Batch
from freight.domain.clock import Clock
from freight.domain.errors import InvalidInput, NotFound
from freight.domain.nesting import MAX_JSON_NESTING, too_deep_message
from freight.ports import Store
from freight.wire import jsonx
from freight.wire.json_stream import nests_deeper_than


@contextlib.contextmanager
def _refused(param: str) -> Iterator[None]:
    """A domain check's refusal as the 400 to send back: a TypeError is ``invalid_type``, a ValueError
    ``invalid_value``, each with the check's own message."""
    try:
        yield
    except TypeError as exc:
        raise InvalidInput(str(exc), param=param, code="invalid_type") from None
    except ValueError as exc:
        raise InvalidInput(str(exc), param=param, code="invalid_value") from None


def priority_of(value: object, param: str = "priority") -> int:
    """``priority`` from a create or ``POST …/priority`` body (default 0), or a 400 saying why not."""
    if value is None:
        return 0
    with _refused(param):
        return scheduling.check_priority(value, param)


def priority_of_raw(raw: bytes | None) -> int:
    """``priority`` given as raw JSON (a streamed Message Batches create)."""
    if raw is None:
        return 0
    return priority_of(raw_value(raw, "priority"))


def schedule_of(value: object, calendar: windows.Calendar) -> str | None:
    """``schedule`` from a create body (None: run when it can), or a 400 saying why not."""
    with _refused("schedule"):
        return windows.check_schedule(value, calendar.off_peak)


def not_before_of(value: object, expires_at: float) -> int | None:
    """``not_before`` from a create body (unix seconds), or a 400 saying why not."""
    with _refused("not_before"):
        return windows.check_not_before(value, expires_at)


def raw_value(raw: bytes | None, param: str) -> object:
    """An extension parameter given as raw JSON (a streamed Message Batches create)."""
    if raw is None:
        return None
    if nests_deeper_than(raw, MAX_JSON_NESTING):  # (orjson refuses it too, as "not valid JSON": say why)
        raise InvalidInput(f"{param}: {too_deep_message('the value')}", param=param, code="nesting_too_deep")
    try:
        return jsonx.loads(raw)
    except ValueError:
        raise InvalidInput(f"{param}: not valid JSON.", param=param, code="invalid_value") from None


def held_extension(calendar: windows.Calendar, clock: Clock) -> Callable[[Batch], dict[str, float | None]]:
    """``freight.held_until`` on a Batch: until when it waits for its model's hours, its off-peak
    schedule or ``not_before`` (None: it may run now, or it has ended)."""
    def extension(b: Batch) -> dict[str, float | None]:
        if b.is_terminal:
            return {"held_until": None}
        held = calendar.held_until(clock.now(), model=b.model, schedule=b.schedule, not_before=b.not_before)
        if held is not None and not math.isfinite(held):  # (hours that never meet: until the deadline ramp)
            held = b.expires_at
        return {"held_until": None if held is None else int(held)}
    return extension


class BatchControl:
    def __init__(self, store: Store, clock: Clock, on_change: Callable[[], None] | None = None):
        self.store = store
        self.clock = clock
        self._on_change = on_change or (lambda: None)

    def _done(self, batch: Batch | None, batch_id: str) -> Batch:
        if batch is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        self._on_change()
        return batch

    def _check(self, batch_id: str) -> None:
        if not ids.is_batch_id(batch_id):
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")

    def pause(self, project: str, batch_id: str) -> Batch:
        """No new request of the batch starts (those waiting in a backend go back to pending); its window
        keeps running. A finished batch is answered as it is."""
        self._check(batch_id)
        return self._done(self.store.pause_batch(project, batch_id, int(self.clock.now())), batch_id)

    def resume(self, project: str, batch_id: str) -> Batch:
        self._check(batch_id)
        return self._done(self.store.resume_batch(project, batch_id), batch_id)

    def set_priority(self, project: str, batch_id: str, body: object) -> Batch:
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.", code="invalid_request")
        for name in body:
            if name != "priority":  # as on create: a misspelt option is refused, not silently ignored
                raise InvalidInput(f"Unknown parameter: {name!r}.", param=str(name), code="unknown_parameter")
        if body.get("priority") is None:
            raise InvalidInput("Missing required parameter: 'priority'.", param="priority",
                               code="missing_required_parameter")
        priority = priority_of(body["priority"])
        self._check(batch_id)
        return self._done(self.store.set_priority(project, batch_id, priority), batch_id)
