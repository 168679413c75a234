"""Batch events and webhooks: which status change is which OpenAI event, the payload, the
Standard Webhooks signature, which URLs may receive deliveries, and when to try again.

A delivery is signed as Standard Webhooks (what ``openai.webhooks.unwrap`` verifies): headers
``webhook-id`` (the event's id, the same on every attempt), ``webhook-timestamp`` (the attempt's
time) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the
base64 body of the ``whsec_…`` secret (one ``v1,…`` per valid secret, space separated).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from freight.domain.batches import BatchStatus

#: The events freight sends, by the status that causes them (OpenAI's batch webhook events).
EVENT_FOR_STATUS: dict[BatchStatus, str] = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.EXPIRED: "batch.expired",
    BatchStatus.CANCELLED: "batch.cancelled",
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_FOR_STATUS.values())
SECRET_PREFIX = "whsec_"
#: How long an old secret keeps signing after ``rotate_secret(keep_old_secret_active_for_24_hours=True)``.
OLD_SECRET_GRACE_S = 24 * 3600


@dataclass(frozen=True)
class BatchEvent:
    """One status change of a batch, as the outbox recorded it (``old_status`` None: created)."""

    seq: int
    id: str
    batch_id: str
    project: str
    old_status: str | None
    new_status: str
    at: int

    @property
    def webhook_type(self) -> str | None:
        """The webhook event this change is, if any (terminal statuses only)."""
        try:
            return EVENT_FOR_STATUS.get(BatchStatus(self.new_status))
        except ValueError:
            return None


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    project: str
    name: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    created_at: int
    updated_at: int
    #: After a rotation that kept it: the previous secret, which also signs until ``old_secret_until``.
    old_secret: str | None = None
    old_secret_until: int | None = None

    def signing_secrets(self, now: float) -> list[str]:
        out = [self.secret]
        if self.old_secret and self.old_secret_until is not None and now < self.old_secret_until:
            out.append(self.old_secret)
        return out


@dataclass(frozen=True)
class Delivery:
    """A delivery that is due: one event to one endpoint, ``attempts`` tries so far."""

    seq: int
    event: BatchEvent
    endpoint: WebhookEndpoint
    attempts: int


@dataclass(frozen=True)
class WebhookPolicy:
    """``[webhooks]`` in freight.toml."""

    #: Keep trying a delivery this long after its event (then it is given up and logged).
    retry_for_s: float = 3 * 24 * 3600
    #: First wait after a failed attempt, doubling up to ``max_delay_s``.
    base_delay_s: float = 5.0
    max_delay_s: float = 3600.0
    #: How long one attempt may take, as a whole (connecting, sending, and the whole answer).
    timeout_s: float = 10.0
    #: Plain http to hosts other than loopback (off: https only, except to 127.0.0.1/::1/localhost).
    allow_http: bool = False
    #: How often the deliverer looks for new events and due deliveries.
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.base_delay_s > self.max_delay_s:
            raise ValueError(f"retry_base_delay_s ({self.base_delay_s}) must be at most retry_max_delay_s "
                             f"({self.max_delay_s})")

    def delay_s(self, attempts: int) -> float:
        """How long to wait after ``attempts`` failed tries: doubling from ``base_delay_s``, at most ``max_delay_s``."""
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** max(0, attempts - 1))

    def next_attempt(self, attempts: int, event_at: float, now: float) -> float | None:
        """When to try again after ``attempts`` failed tries; None once ``retry_for_s`` is spent."""
        at = now + self.delay_s(attempts)
        return None if at > event_at + self.retry_for_s else at


def event_payload(event_id: str, event_type: str, created_at: int, batch_id: str) -> bytes:
    """OpenAI's webhook event body, compact and stable (the same bytes on every attempt)."""
    body = {"id": event_id, "type": event_type, "object": "event", "created_at": created_at,
            "data": {"id": batch_id}}
    return json.dumps(body, separators=(",", ":")).encode()


def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):])
    return secret.encode()


def signature(secrets_: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<sig>`` for each secret, space separated."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets_)


def signed_headers(endpoint: WebhookEndpoint, webhook_id: str, body: bytes, now: float) -> dict[str, str]:
    ts = int(now)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(ts),
            "webhook-signature": signature(endpoint.signing_secrets(now), webhook_id, ts, body),
            "content-type": "application/json"}


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What ``signing_secret_hint`` shows: the prefix and the last four characters."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: Any, allow_http: bool) -> str | None:
    """None when deliveries may go to ``url``; else why not (for a 400)."""
    if not isinstance(url, str) or not url:
        return "url must be a non-empty string."
    if len(url) > 2048:
        return "url must be at most 2048 characters."
    bad = next((c for c in url if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        return f"url must not contain spaces or control characters (it has {bad!r})."
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        return f"url is not a valid URL ({exc})."
    if parts.scheme not in ("https", "http") or not host:
        return "url must be an absolute https:// URL."
    try:
        port = parts.port  # (a ValueError when it is not a number from 0 to 65535)
    except ValueError:
        port = 0
    if port == 0:
        return "url has an invalid port: give a number from 1 to 65535 (or none)."
    if parts.scheme == "http" and not allow_http and not _loopback(host):
        return ("url must use https (plain http is allowed only to loopback, or with [webhooks] allow_http = true "
                "in freight.toml).")
    return None


def check_event_types(value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return "event_types must be a non-empty list of strings."
    unknown = [v for v in value if v not in EVENT_TYPES]
    if unknown:
        return f"event_types has unsupported event type(s) {unknown}; freight sends {list(EVENT_TYPES)}."
    return None


class DeliveryState(enum.IntEnum):
    PENDING = 0
    DELIVERED = 1
    #: Given up after ``WebhookPolicy.retry_for_s`` (or the endpoint's URL is no longer allowed).
    FAILED = 2
