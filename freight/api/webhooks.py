"""OpenAI's webhook endpoints API: /v1/webhook_endpoints (what ``client.webhooks.create / retrieve
/ update / list / delete / rotate_secret / test`` and ``client.webhooks.event_types.list`` call)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from freight.api.openai_files import _project, _runtime
from freight.api.params import int_param, json_body, str_param
from freight.domain.errors import InvalidInput
from freight.domain.webhooks import EVENT_TYPES, WebhookEndpoint, secret_hint
from freight.observe.deliver import send_test

router = APIRouter()


def endpoint_object(e: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": e.id, "object": "webhook_endpoint", "created_at": e.created_at,
                           "updated_at": e.updated_at, "name": e.name, "url": e.url,
                           "event_types": list(e.event_types), "signing_secret_hint": secret_hint(e.secret)}
    if with_secret:
        out["signing_secret"] = e.secret
    return out


async def _object_body(request: Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_request_body")
    return body


@router.post("/v1/webhook_endpoints")
async def create_endpoint(request: Request) -> JSONResponse:
    body = await _object_body(request)
    e = await run_in_threadpool(_runtime(request).webhooks.create, _project(request), body)
    return JSONResponse(endpoint_object(e, with_secret=True))


@router.get("/v1/webhook_endpoints")
async def list_endpoints(request: Request) -> JSONResponse:
    limit = int_param(request, "limit", 20, 1, 100)
    page = await run_in_threadpool(_runtime(request).webhooks.list, _project(request),
                                   after=str_param(request, "after"), limit=limit)
    data = [endpoint_object(e) for e in page.items]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": page.has_more})


@router.get("/v1/webhook_endpoints/{endpoint_id}")
async def retrieve_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    e = await run_in_threadpool(_runtime(request).webhooks.get, _project(request), endpoint_id)
    return JSONResponse(endpoint_object(e))


@router.post("/v1/webhook_endpoints/{endpoint_id}")
async def update_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    body = await _object_body(request)
    e = await run_in_threadpool(_runtime(request).webhooks.update, _project(request), endpoint_id, body)
    return JSONResponse(endpoint_object(e))


@router.delete("/v1/webhook_endpoints/{endpoint_id}")
async def delete_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    await run_in_threadpool(_runtime(request).webhooks.delete, _project(request), endpoint_id)
    return JSONResponse({"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True})


@router.post("/v1/webhook_endpoints/{endpoint_id}/rotate_secret")
async def rotate_secret(request: Request, endpoint_id: str) -> JSONResponse:
    body = await _object_body(request)
    e = await run_in_threadpool(_runtime(request).webhooks.rotate_secret, _project(request), endpoint_id, body)
    return JSONResponse(endpoint_object(e, with_secret=True))


@router.post("/v1/webhook_endpoints/{endpoint_id}/test")
async def test_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    body = await _object_body(request)
    event_type = body.get("event_type")
    if event_type not in EVENT_TYPES:
        raise InvalidInput(f"event_type must be one of {list(EVENT_TYPES)}, got {str(event_type)[:64]!r}.",
                           param="event_type", code="invalid_value")
    runtime = _runtime(request)
    e = await run_in_threadpool(runtime.webhooks.get, _project(request), endpoint_id)
    status, error = await send_test(e, event_type, runtime.clock, runtime.settings.webhooks)
    if status is None:
        raise InvalidInput(f"The webhook endpoint {e.url} could not be reached ({error}).", param="url",
                           code="webhook_unreachable")
    return JSONResponse({"object": "webhook_endpoint.test", "webhook_endpoint_id": e.id, "event_type": event_type,
                         # (OpenAI's contract: success is "always true for returned results; use status_code")
                         "status_code": status, "success": True})


@router.get("/v1/webhook_event_types")
async def event_types(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": list(EVENT_TYPES)})
