"""Queue intake policy: when a pending batch of single messages flushes, and what makes a message valid.

Messages arrive one at a time (a RabbitMQ queue, a Redis Stream, an HTTP ticket) and are kept in the
store until they are flushed together as one ordinary freight batch. A pending batch flushes as soon as
any of these holds (``flush_reason``):

- ``size``: it holds ``flush_size`` messages;
- ``age``: its oldest message arrived ``flush_age_s`` ago;
- ``deadline``: the earliest ``deadline`` among its messages is less than ``deadline_margin_s`` away
  (the time a batch is expected to take, so that its result is back by then).

Everything here is a pure function of the pending messages and the time: nothing is kept in memory, so
a restarted (or second) process decides the same from the store.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from freight.domain.text import storable

FlushReason = Literal["size", "age", "deadline"]


@dataclass(frozen=True)
class FlushPolicy:
    flush_size: int = 100
    flush_age_s: float = 5.0
    #: The time a flushed batch is expected to take: a message with a deadline flushes this long before it.
    deadline_margin_s: float = 30.0

    def __post_init__(self) -> None:
        if self.flush_size < 1:
            raise ValueError("flush_size must be at least 1")
        if self.flush_age_s < 0 or self.deadline_margin_s < 0:
            raise ValueError("flush_age_s and deadline_margin_s must not be negative")


@dataclass(frozen=True)
class Pending:
    """One message waiting to be flushed: when it arrived, and by when its result is needed (unix time)."""

    received_at: float
    deadline: float | None = None


def flush_at(policy: FlushPolicy, pending: Sequence[Pending]) -> float | None:
    """The time at which this pending batch flushes (None: nothing pending). Full: its oldest arrival."""
    if not pending:
        return None
    oldest = min(p.received_at for p in pending)
    if len(pending) >= policy.flush_size:
        return oldest
    at = oldest + policy.flush_age_s
    deadlines = [p.deadline for p in pending if p.deadline is not None]
    if deadlines:
        at = min(at, min(deadlines) - policy.deadline_margin_s)
    return at


def flush_reason(policy: FlushPolicy, pending: Sequence[Pending], now: float) -> FlushReason | None:
    """Why this pending batch must flush now, or None if it may wait."""
    if not pending:
        return None
    if len(pending) >= policy.flush_size:
        return "size"
    oldest = min(p.received_at for p in pending)
    deadlines = [p.deadline for p in pending if p.deadline is not None]
    if deadlines and now >= min(deadlines) - policy.deadline_margin_s:
        return "deadline"
    if now >= oldest + policy.flush_age_s:
        return "age"
    return None


@dataclass(frozen=True)
class IntakeRequest:
    """A valid message: the request it asks for."""

    custom_id: str
    url: str
    body: dict[str, Any]
    deadline: float | None


@dataclass(frozen=True)
class Rejected:
    """A message that cannot become a request; it gets an error result at once."""

    custom_id: str
    code: str
    message: str
    #: The parameter at fault, where one is (``body.stream``).
    param: str | None = None


#: A message id longer than this is kept as its digest (``message_key``): a store's unique index on
#: (intake, message id) has a size limit per entry (PostgreSQL's btree: about 2,700 bytes).
MAX_MESSAGE_ID_CHARS = 256


def message_key(message_id: str) -> str:
    """The id a message is kept (and deduplicated) under: its own, or, when that is too long or not
    storable, ``sha256:`` and the digest of it (the same for a redelivery, so it is still kept once)."""
    if len(message_id) <= MAX_MESSAGE_ID_CHARS and storable(message_id):
        return message_id
    return "sha256:" + hashlib.sha256(message_id.encode(errors="surrogatepass")).hexdigest()


def route_problem(custom_id: str, **route: str | None) -> Rejected | None:
    """Why a message's reply route (``reply_to``, ``correlation_id``) cannot be kept, if it cannot: the
    message is refused, and its error line goes where the results of messages without a route go."""
    for name, value in route.items():
        if value is not None and not storable(value):
            return Rejected(custom_id, "invalid_value", f"The message's {name} holds a NUL character or text "
                            "that is not UTF-8; it cannot be kept.", name)
    return None


def _deadline(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # (an integer too large for a float: no deadline anyone meant)
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def parse_message(payload: bytes | str | dict[str, Any], *, message_id: str, model: str | None, endpoint: str,
                  models: Collection[str], endpoints: Collection[str]) -> IntakeRequest | Rejected:
    """One message as a request. ``payload``: the message's JSON (AMQP, HTTP) or a stream entry's
    fields (Redis: ``body`` is JSON text). ``model``/``endpoint``: the intake's own, used where the
    message names none; ``models``: the served ones."""
    fields: Any = payload
    if isinstance(payload, bytes | str):
        try:
            fields = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return Rejected(message_id, "invalid_json", "The message is not valid JSON.")
        except RecursionError:
            return Rejected(message_id, "invalid_json", "The message's JSON nests too deeply.")
    if not isinstance(fields, dict):
        return Rejected(message_id, "invalid_request", "The message must be a JSON object with a 'body'.")
    raw_custom_id = fields.get("custom_id")
    custom_id = raw_custom_id if isinstance(raw_custom_id, str) and raw_custom_id else message_id
    if not storable(custom_id):
        return Rejected(message_id, "invalid_value", "The message's custom_id holds a NUL character or text that "
                        "is not UTF-8; it cannot be kept.", "custom_id")
    body = fields.get("body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return Rejected(custom_id, "invalid_json", "The message's 'body' is not valid JSON.")
        except RecursionError:
            return Rejected(custom_id, "invalid_json", "The message's 'body' nests too deeply.")
    if body is None:
        return Rejected(custom_id, "missing_required_parameter", "The message has no 'body'.")
    if not isinstance(body, dict):
        return Rejected(custom_id, "invalid_request", "The message's 'body' must be a JSON object.")
    url = fields.get("url") or endpoint
    if url not in endpoints:
        return Rejected(custom_id, "invalid_value", f"Unsupported url {url!r}; this intake takes "
                        + ", ".join(sorted(endpoints)) + ".")
    name = body.get("model") or model
    if not isinstance(name, str) or name not in models:
        return Rejected(custom_id, "model_not_found", f"The model {name!r} does not exist or is not served here.")
    return IntakeRequest(custom_id, url, {**body, "model": name}, _deadline(fields.get("deadline")))
