"""Anthropic Message Batches objects, result lines and error envelopes, field for field.

shared/reference/batch-apis.md §4 and §5: RFC 3339 timestamps, the five request counts,
``results_url`` exactly when ended, ``{"type":"error","error":{"type","message"},"request_id"}``.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from freight.domain.message_batches import MessageBatch as MessageBatchView
from freight.domain.message_batches import ProcessingStatus
from freight.domain.requests import BATCH_CANCELLED, BATCH_EXPIRED, Outcome, Result
from freight.wire import jsonx
from freight.wire.extensions import batch_extension

#: Error types of the Anthropic API, by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_envelope(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def results_path(message_batch_id: str) -> str:
    return f"/v1/messages/batches/{message_batch_id}/results"


def message_batch_object(mb: MessageBatchView, base_url: str, freight: dict[str, Any] | None = None) -> dict[str, Any]:
    """A MessageBatch; ``base_url`` (no trailing slash) is where ``results_url`` points; ``freight``: the
    figures the services add (cost, progress, holds) beside the batch's own extension fields."""
    b = mb.batch
    counts = mb.counts
    ended = mb.processing_status == ProcessingStatus.ENDED
    return {
        "id": mb.id,
        "type": "message_batch",
        "processing_status": mb.processing_status,
        "request_counts": {
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        },
        "ended_at": rfc3339(mb.ended_at) if ended else None,
        "created_at": rfc3339(b.created_at),
        "expires_at": rfc3339(b.expires_at),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(b.cancelling_at),
        "results_url": base_url + results_path(mb.id) if ended else None,
        "freight": {**batch_extension(b), **(freight or {})},
    }


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def deleted_object(message_batch_id: str) -> dict[str, Any]:
    return {"id": message_batch_id, "type": "message_batch_deleted"}


# ---- results -------------------------------------------------------------------------------

def _as_anthropic_error(result: Result) -> dict[str, Any]:
    """The ``error`` of an errored result: the Messages API's own error body where there is one."""
    if result.status_code is None:
        # No response at all (retries ran out, the worker was lost): retryable as it is.
        message = result.error_message or "The request could not be completed."
        if result.error_code:
            message = f"{result.error_code}: {message}"
        return error_envelope("api_error", message, result.request_id)
    body: Any = None
    if result.body:
        try:
            body = jsonx.loads(result.body)
        except jsonx.JSONDecodeError:
            body = None
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error_type_for(result.status_code)
    message = f"The request failed with HTTP {result.status_code}."
    if isinstance(error, dict):
        if body.get("type") == "error" and isinstance(error.get("type"), str):  # Anthropic's envelope
            error_type = error["type"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    request_id = body.get("request_id") if isinstance(body, dict) and body.get("request_id") else result.request_id
    return error_envelope(error_type, message, request_id)


def result_line(custom_id: str, result: Result) -> bytes:
    """One line of ``GET …/results``: succeeded / errored / canceled / expired."""
    head = b'{"custom_id":' + jsonx.dumps(custom_id) + b',"result":'
    if result.outcome is Outcome.SUCCEEDED:
        body = result.body if result.body is not None else b"null"
        if not body.isascii():
            body = jsonx.ascii_escape(body)
        return head + b'{"type":"succeeded","message":' + body + b"}}\n"
    if result.status_code is None and result.error_code == BATCH_CANCELLED:
        return head + b'{"type":"canceled"}}\n'
    if result.status_code is None and result.error_code == BATCH_EXPIRED:
        return head + b'{"type":"expired"}}\n'
    return head + b'{"type":"errored","error":' + jsonx.dumps(_as_anthropic_error(result)) + b"}}\n"
