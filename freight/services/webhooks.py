"""Webhook endpoints of a project: create, read, update, delete, rotate the secret (OpenAI's
``/v1/webhook_endpoints``). Deliveries are planned from the batch events outbox and sent by
freight.observe.deliver."""

from __future__ import annotations

import dataclasses
from typing import Any

from freight.domain import ids
from freight.domain.clock import Clock
from freight.domain.errors import InvalidInput, NotFound
from freight.domain.webhooks import (
    OLD_SECRET_GRACE_S,
    WebhookEndpoint,
    WebhookPolicy,
    check_event_types,
    check_url,
    new_secret,
)
from freight.ports import Page, WebhookStore

MAX_NAME_CHARS = 256


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"No webhook endpoint found with id '{endpoint_id[:64]}'.", param="webhook_endpoint_id",
                    code="not_found")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("name must be a non-empty string.", param="name", code="invalid_value")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInput(f"name must be at most {MAX_NAME_CHARS} characters.", param="name", code="invalid_value")
    return value


class WebhookService:
    def __init__(self, store: WebhookStore, clock: Clock, policy: WebhookPolicy):
        self.store = store
        self.clock = clock
        self.policy = policy

    def _url(self, value: Any) -> str:
        why = check_url(value, self.policy.allow_http)
        if why is not None:
            raise InvalidInput(why, param="url", code="invalid_url")
        assert isinstance(value, str)
        return value

    @staticmethod
    def _event_types(value: Any) -> tuple[str, ...]:
        why = check_event_types(value)
        if why is not None:
            raise InvalidInput(why, param="event_types", code="invalid_value")
        return tuple(dict.fromkeys(value))

    @staticmethod
    def _known(body: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InvalidInput(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                               code="unknown_parameter")

    def create(self, project: str, body: dict[str, Any]) -> WebhookEndpoint:
        self._known(body, {"name", "url", "event_types"})
        for key in ("name", "url", "event_types"):
            if key not in body:
                raise InvalidInput(f"Missing required parameter: '{key}'.", param=key,
                                   code="missing_required_parameter")
        now = int(self.clock.now())
        endpoint = WebhookEndpoint(ids.new_webhook_endpoint_id(), project, _name(body["name"]), self._url(body["url"]),
                                   self._event_types(body["event_types"]), new_secret(), now, now)
        self.store.insert_webhook_endpoint(endpoint)
        return endpoint

    def get(self, project: str, endpoint_id: str) -> WebhookEndpoint:
        found = self.store.get_webhook_endpoint(project, endpoint_id) if ids.is_webhook_endpoint_id(endpoint_id) \
            else None
        if found is None:
            raise _not_found(endpoint_id)
        return found

    def list(self, project: str, *, after: str | None, limit: int) -> Page:
        return self.store.list_webhook_endpoints(project, after=after, limit=limit)

    def update(self, project: str, endpoint_id: str, body: dict[str, Any]) -> WebhookEndpoint:
        self._known(body, {"name", "url", "event_types"})
        current = self.get(project, endpoint_id)
        changed = dataclasses.replace(
            current,
            name=_name(body["name"]) if "name" in body else current.name,
            url=self._url(body["url"]) if "url" in body else current.url,
            event_types=self._event_types(body["event_types"]) if "event_types" in body else current.event_types,
        )
        if changed == current:
            return current  # an unchanged update does not advance updated_at
        changed = dataclasses.replace(changed, updated_at=int(self.clock.now()))
        if not self.store.update_webhook_endpoint(changed):
            raise _not_found(endpoint_id)
        return changed

    def delete(self, project: str, endpoint_id: str) -> None:
        if not ids.is_webhook_endpoint_id(endpoint_id) or not self.store.delete_webhook_endpoint(project, endpoint_id):
            raise _not_found(endpoint_id)

    def rotate_secret(self, project: str, endpoint_id: str, body: dict[str, Any]) -> WebhookEndpoint:
        self._known(body, {"keep_old_secret_active_for_24_hours"})
        keep = body.get("keep_old_secret_active_for_24_hours", False)
        if not isinstance(keep, bool):
            raise InvalidInput("keep_old_secret_active_for_24_hours must be a boolean.",
                               param="keep_old_secret_active_for_24_hours", code="invalid_type")
        current = self.get(project, endpoint_id)
        now = int(self.clock.now())
        rotated = dataclasses.replace(current, secret=new_secret(), updated_at=now,
                                      old_secret=current.secret if keep else None,
                                      old_secret_until=now + OLD_SECRET_GRACE_S if keep else None)
        if not self.store.update_webhook_endpoint(rotated):
            raise _not_found(endpoint_id)
        return rotated
