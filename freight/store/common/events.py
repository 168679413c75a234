"""``EventStore`` and ``WebhookStore`` over named SQL (events.sql).

``record_event`` is called by the batch status changes inside their own transaction (the outbox).
"""

from __future__ import annotations

import json

from freight.domain import ids
from freight.domain.webhooks import BatchEvent, Delivery, DeliveryState, WebhookEndpoint
from freight.ports.records import Page

from .base import Base
from .db import Row, Tx

#: The cursor that remembers which events the webhook planner has turned into deliveries.
WEBHOOK_CURSOR = "webhooks"


def record_event(tx: Tx, batch_id: str, old_status: str | None, new_status: str, at: int) -> None:
    """In the transaction that changes the batch: the event row (its seq comes in commit order)."""
    tx.run("lock_events")
    tx.run("insert_event", {"event_id": ids.new_event_id(), "batch_id": batch_id, "old_status": old_status,
                            "new_status": new_status, "at": at})


def _event(row: Row, prefix: str = "") -> BatchEvent:
    return BatchEvent(int(row[prefix + "seq"]), row[prefix + "id"], row[prefix + "batch_id"], row[prefix + "project"],
                      row[prefix + "old_status"], row[prefix + "new_status"], int(row[prefix + "at"]))


def _endpoint(row: Row) -> WebhookEndpoint:
    return WebhookEndpoint(row["id"], row["project"], row["name"], row["url"], tuple(json.loads(row["event_types"])),
                           row["secret"], int(row["created_at"]), int(row["updated_at"]), row["old_secret"],
                           row["old_secret_until"])


def _endpoint_params(e: WebhookEndpoint) -> dict[str, object]:
    return {"id": e.id, "project": e.project, "name": e.name, "url": e.url, "event_types": json.dumps(e.event_types),
            "secret": e.secret, "old_secret": e.old_secret, "old_secret_until": e.old_secret_until,
            "created_at": e.created_at, "updated_at": e.updated_at}


class EventsMixin(Base):
    # ---- events ------------------------------------------------------------------------
    def events_after(self, after_seq: int, limit: int, project: str | None = None) -> list[BatchEvent]:
        with self._db.read() as tx:
            rows = tx.all("events_after", {"after": after_seq, "project": project, "limit": limit})
        return [_event(r) for r in rows]

    def last_event_seq(self) -> int:
        with self._db.read() as tx:
            row = tx.one("last_event_seq")
        return int(row["seq"]) if row else 0

    # ---- webhook endpoints -------------------------------------------------------------
    def insert_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        with self._db.write() as tx:
            tx.run("insert_webhook_endpoint", _endpoint_params(endpoint))

    def get_webhook_endpoint(self, project: str, endpoint_id: str) -> WebhookEndpoint | None:
        with self._db.read() as tx:
            row = tx.one("webhook_endpoint", {"id": endpoint_id, "project": project})
        return _endpoint(row) if row else None

    def list_webhook_endpoints(self, project: str, *, after: str | None, limit: int) -> Page:
        with self._db.read() as tx:
            after_seq = None
            if after is not None:
                row = tx.one("webhook_endpoint_seq", {"id": after, "project": project})
                if row is None:
                    return Page([], False)
                after_seq = row["seq"]
            rows = tx.all("list_webhook_endpoints", {"project": project, "after_seq": after_seq, "limit": limit + 1})
        return Page([_endpoint(r) for r in rows[:limit]], len(rows) > limit)

    def update_webhook_endpoint(self, endpoint: WebhookEndpoint) -> bool:
        with self._db.write() as tx:
            return tx.run("update_webhook_endpoint", _endpoint_params(endpoint)) == 1

    def delete_webhook_endpoint(self, project: str, endpoint_id: str) -> bool:
        with self._db.write() as tx:
            if tx.run("delete_webhook_endpoint", {"id": endpoint_id, "project": project}) != 1:
                return False
            tx.run("drop_pending_deliveries", {"endpoint_id": endpoint_id})
            return True

    # ---- deliveries ------------------------------------------------------------------------
    def plan_deliveries(self, now: float, limit: int) -> int:
        with self._db.write() as tx:
            row = tx.one("event_cursor", {"name": WEBHOOK_CURSOR})
            after = int(row["seq"]) if row else 0
            rows = tx.all("events_to_plan", {"after": after, "limit": limit})
            if not rows:
                return 0
            events = [_event(r) for r in rows if not r["anthropic"]]
            wanted = [e for e in events if e.webhook_type is not None]
            projects = sorted({e.project for e in wanted})
            endpoints = ([_endpoint(r) for r in tx.all("webhook_endpoints_of", {"projects": tx.array(projects)})]
                         if projects else [])
            tx.many("insert_delivery", [{"event_seq": e.seq, "endpoint_id": w.id, "next_at": now}
                                        for e in wanted for w in endpoints
                                        if w.project == e.project and e.webhook_type in w.event_types])
            tx.run("set_event_cursor", {"name": WEBHOOK_CURSOR, "seq": int(rows[-1]["seq"])})
            return len(rows)

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        with self._db.read() as tx:
            rows = tx.all("due_deliveries", {"now": now, "limit": limit})
        return [Delivery(int(r["d_seq"]), _event(r, "e_"), _endpoint(r), int(r["d_attempts"])) for r in rows]

    def delivery_attempted(self, seq: int, status: int | None, error: str | None, next_at: float | None,
                           now: float) -> None:
        delivered = status is not None and 200 <= status < 300
        state = DeliveryState.DELIVERED if delivered else (
            DeliveryState.PENDING if next_at is not None else DeliveryState.FAILED)
        with self._db.write() as tx:
            tx.run("delivery_attempted", {"seq": seq, "state": int(state), "next_at": None if delivered else next_at,
                                          "last_status": status, "last_error": error,
                                          "done_at": None if state is DeliveryState.PENDING else now})

    def delivery_states(self, endpoint_id: str) -> list[tuple[str, str, int]]:
        with self._db.read() as tx:
            rows = tx.all("delivery_states", {"endpoint_id": endpoint_id})
        return [(r["event_id"], DeliveryState(int(r["state"])).name.lower(), int(r["attempts"])) for r in rows]
