"""Batch events (the outbox) and webhook endpoints with their durable deliveries.

Every status change of a batch (and its creation) is a ``BatchEvent`` row written in the same
transaction as the change, numbered by ``seq`` in commit order: a reader that has seen every
event up to ``seq`` N misses none by asking for those after N. The dashboard and the webhook
deliverer are such readers (``events_after``).
"""

from __future__ import annotations

from typing import Protocol

from freight.domain.webhooks import BatchEvent, Delivery, WebhookEndpoint
from freight.ports.records import Page


class EventStore(Protocol):
    def events_after(self, after_seq: int, limit: int, project: str | None = None) -> list[BatchEvent]:
        """Events with ``seq > after_seq`` in ``seq`` order (of one project, or of all)."""
        ...

    def last_event_seq(self) -> int:
        """The newest event's ``seq`` (0 when there is none): where a reader starts to see only new ones."""
        ...


class WebhookStore(Protocol):
    def insert_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None: ...
    def get_webhook_endpoint(self, project: str, endpoint_id: str) -> WebhookEndpoint | None: ...
    def list_webhook_endpoints(self, project: str, *, after: str | None, limit: int) -> Page:
        """Newest first; ``after``: the last id of the previous page."""
        ...

    def update_webhook_endpoint(self, endpoint: WebhookEndpoint) -> bool:
        """Name, url, event types, secrets and ``updated_at``; False when it is gone."""
        ...

    def delete_webhook_endpoint(self, project: str, endpoint_id: str) -> bool:
        """Deleted (its pending deliveries are dropped); False when it was not there."""
        ...

    def plan_deliveries(self, now: float, limit: int) -> int:
        """Turn events not yet planned into delivery rows (one per subscribed endpoint of the
        event's project, for OpenAI batches' webhook events), in one transaction with the cursor
        that remembers where planning stopped. How many events it read (``limit`` at most)."""
        ...

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        ...

    def delivery_attempted(self, seq: int, status: int | None, error: str | None, next_at: float | None,
                           now: float) -> None:
        """Record an attempt: delivered (``status`` 2xx), to try again at ``next_at``, or (``next_at``
        None) given up."""
        ...

    def delivery_states(self, endpoint_id: str) -> list[tuple[str, str, int]]:
        """(event id, "pending"/"delivered"/"failed", attempts) of an endpoint's deliveries, in event order."""
        ...
