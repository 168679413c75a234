"""Anthropic Message Batches API: /v1/messages/batches, and real-time /v1/messages.

shared/reference/batch-apis.md §4 and §5. The official ``anthropic`` SDK works unchanged::

    client = Anthropic(base_url="http://127.0.0.1:8080", api_key="...")

Every error on these paths (unknown ids, wrong methods, bad bodies, limits) is Anthropic's
envelope ``{"type":"error","error":{"type","message"},"request_id"}``, whose ``request_id`` is the
``request-id`` header. ``?beta=true`` and the ``anthropic-beta`` header are ignored, so the
``client.beta.messages.batches`` variant works too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from freight.api.errors import retry_headers
from freight.api.params import int_param, json_body, str_param
from freight.domain import ids
from freight.domain.errors import FreightError, PayloadTooLarge
from freight.domain.message_batches import MESSAGES_ENDPOINT, MessageBatch
from freight.domain.requests import Failure
from freight.ports import on_behalf_of
from freight.runtime import Runtime
from freight.services.message_batches import MessageBatchService
from freight.services.scheduling import BatchControl
from freight.wire import anthropic, jsonx

log = logging.getLogger("freight.api")

PREFIX = "/v1/messages"
#: The body of a real-time Messages request (Anthropic's own limit).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: The create body is handed to the parser in pieces of about this size.
FEED_BYTES = 1 << 20
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def is_anthropic_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(request: Request | None, status: int, message: str, error_type: str | None = None,
                   code: str | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body = anthropic.error_envelope(error_type or anthropic.error_type_for(status), message,
                                    request_id or ids.new_request_id())
    return JSONResponse(body, status_code=status, headers=retry_headers(status, code))


def from_freight_error(request: Request | None, exc: FreightError) -> JSONResponse:
    if exc.status_code >= 500 and not exc.public:
        log.error("internal error: %s", exc.message)
        return error_response(request, 500, "Internal server error.", "api_error")
    return error_response(request, exc.status_code, exc.message, code=exc.code)


def reshape_error(request: Request, response: JSONResponse) -> JSONResponse:
    """An error response made outside these routes (by the app's middleware: 401, 500) in Anthropic's
    envelope, headers kept (``www-authenticate``)."""
    try:
        body = jsonx.loads(bytes(response.body))
    except jsonx.JSONDecodeError:
        body = {}
    if not isinstance(body, dict) or body.get("type") == "error":
        return response
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    reshaped = error_response(request, response.status_code, str(error.get("message") or "Request failed."))
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "content-type"):
            reshaped.headers[name] = value
    return reshaped


class AnthropicRoute(APIRoute):
    """A route whose every error is Anthropic's envelope (not OpenAI's, as elsewhere)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def anthropic_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except FreightError as exc:
                return from_freight_error(request, exc)
            except StarletteHTTPException as exc:
                return error_response(request, exc.status_code, str(exc.detail or "Request failed."))
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                return error_response(request, 400, f"Invalid request: {first.get('msg', 'invalid input')}")
            except Exception:
                log.exception("unhandled error")
                return error_response(request, 500, "Internal server error.", "api_error")

        return anthropic_errors


router = APIRouter(route_class=AnthropicRoute)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _project(request: Request) -> str:
    project: str = request.state.project
    return project


def _service(request: Request) -> MessageBatchService:
    return _runtime(request).message_batches  # built by the composition root (freight/runtime.py)


def _base_url(request: Request) -> str:
    """Where results_url points: the configured public URL, else the URL this request came to."""
    public = _runtime(request).settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def _object(request: Request, mb: MessageBatch, base: str | None = None) -> dict[str, Any]:
    """A MessageBatch with the figures the services add under ``freight`` (cost, progress, holds), as
    on an OpenAI Batch."""
    return anthropic.message_batch_object(mb, base if base is not None else _base_url(request),
                                          _runtime(request).cost.freight_object(mb.batch))


def _json(data: Any, status: int = 200) -> Response:
    return Response(jsonx.dumps(data), status_code=status, media_type="application/json")


# ---- Message Batches ------------------------------------------------------------------------

@router.post("/v1/messages/batches")
async def create_message_batch(request: Request) -> Response:
    service = _service(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.limits.max_bytes:
        raise PayloadTooLarge(f"The request body is larger than the {service.limits.max_bytes} byte limit of a "
                              "Message Batch.", code="request_too_large")
    creator = await run_in_threadpool(service.creator, _project(request))
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:
                await run_in_threadpool(creator.feed, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(creator.feed, b"".join(pending))
        mb = await run_in_threadpool(creator.finish)
    except BaseException:
        creator.abort()
        raise
    return _json(_object(request, mb))


@router.get("/v1/messages/batches")
async def list_message_batches(request: Request) -> Response:
    limit = int_param(request, "limit", 20, 1, 1000)
    items, has_more = await run_in_threadpool(
        _service(request).list, _project(request), after_id=str_param(request, "after_id"),
        before_id=str_param(request, "before_id"), limit=limit)
    base = _base_url(request)
    return _json(anthropic.list_page([_object(request, mb, base) for mb in items], has_more))


@router.get("/v1/messages/batches/{message_batch_id}")
async def retrieve_message_batch(request: Request, message_batch_id: str) -> Response:
    mb = await run_in_threadpool(_service(request).get, _project(request), message_batch_id)
    return _json(_object(request, mb))


@router.post("/v1/messages/batches/{message_batch_id}/cancel")
async def cancel_message_batch(request: Request, message_batch_id: str) -> Response:
    mb = await run_in_threadpool(_service(request).cancel, _project(request), message_batch_id)
    return _json(_object(request, mb))


@router.delete("/v1/messages/batches/{message_batch_id}")
async def delete_message_batch(request: Request, message_batch_id: str) -> Response:
    deleted = await run_in_threadpool(_service(request).delete, _project(request), message_batch_id)
    return _json(anthropic.deleted_object(deleted))


@router.get("/v1/messages/batches/{message_batch_id}/results")
async def message_batch_results(request: Request, message_batch_id: str) -> StreamingResponse:
    lines = await run_in_threadpool(_service(request).results, _project(request), message_batch_id)
    return StreamingResponse(lines, media_type="application/x-jsonl")


async def _control(request: Request, message_batch_id: str, action: str, body: object = None) -> Response:
    """pause / resume / priority on the freight batch behind a Message Batch (docs/scheduling.md)."""
    runtime, project = _runtime(request), _project(request)
    control = BatchControl(runtime.store, runtime.clock, runtime.engine.wake)
    mb = await run_in_threadpool(_service(request).get, project, message_batch_id)  # 404 if not this project's
    if action == "priority":
        await run_in_threadpool(control.set_priority, project, mb.batch.id, body)
    else:
        await run_in_threadpool(getattr(control, action), project, mb.batch.id)
    mb = await run_in_threadpool(_service(request).get, project, message_batch_id)
    return _json(_object(request, mb))


@router.post("/v1/messages/batches/{message_batch_id}/pause")
async def pause_message_batch(request: Request, message_batch_id: str) -> Response:
    return await _control(request, message_batch_id, "pause")


@router.post("/v1/messages/batches/{message_batch_id}/resume")
async def resume_message_batch(request: Request, message_batch_id: str) -> Response:
    return await _control(request, message_batch_id, "resume")


@router.post("/v1/messages/batches/{message_batch_id}/priority")
async def set_message_batch_priority(request: Request, message_batch_id: str) -> Response:
    return await _control(request, message_batch_id, "priority", await json_body(request))


# ---- real-time Messages (try a request before a batch) --------------------------------------

@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    body = await json_body(request, max_bytes=MAX_MESSAGE_BYTES)
    if not isinstance(body, dict):
        return error_response(request, 400, "The request body must be a JSON object.")
    if body.get("stream") is True:
        return error_response(request, 400, "stream: streaming is not supported by this server.")
    model = body.get("model")
    if not isinstance(model, str):
        return error_response(request, 400, "model: Field required." if model is None
                              else "model: Input should be a valid string.")
    catalog = _runtime(request).catalog
    if (batch_only := catalog.batch_only(model)) is not None:
        return error_response(request, 400, f"model: {batch_only}")
    problem = catalog.check(model, MESSAGES_ENDPOINT)
    backend = catalog.backend_for(model)
    if problem is not None or backend is None:
        return error_response(request, 404, f"model: {problem or model}")
    try:
        await backend.start()  # loads the model if the engine has not yet (a no-op once it is loaded)
        with on_behalf_of(_project(request)):  # the result cache's scope (docs/cache.md)
            (result,) = await backend.execute(MESSAGES_ENDPOINT, [body])
    except Exception as exc:  # as the engine does: a backend that raises is a model failure, not a crash
        log.warning("backend call failed", exc_info=True)
        return error_response(request, 503, f"The model could not answer: {type(exc).__name__}", "api_error")
    if isinstance(result, Failure):
        return error_response(request, 503, f"The model could not answer: {result.message}", "api_error")
    status = result.status_code or 500
    if 200 <= status < 300:
        return Response(result.body or b"{}", status_code=status, media_type="application/json")
    try:
        error = jsonx.loads(result.body or b"{}").get("error") or {}
    except (jsonx.JSONDecodeError, AttributeError):
        error = {}
    return error_response(request, status, str(error.get("message") or f"The model answered HTTP {status}."),
                          error.get("type") if isinstance(error.get("type"), str) else None)


# ---- anything else under /v1/messages: Anthropic's 404 / 405 --------------------------------

_KNOWN = ("/v1/messages", "/v1/messages/batches")
#: The routes under a Message Batch (a wrong method on one is a 405, not a 404).
ACTIONS = ("cancel", "results", "pause", "resume", "priority")


@router.api_route("/v1/messages", methods=_METHODS, include_in_schema=False)
@router.api_route("/v1/messages/batches", methods=_METHODS, include_in_schema=False)
@router.api_route("/v1/messages/{rest:path}", methods=_METHODS, include_in_schema=False)
async def unknown_route(request: Request) -> Response:
    path = request.url.path.rstrip("/")
    parts = path.split("/")
    known = path in _KNOWN or (len(parts) in (5, 6) and parts[:4] == ["", "v1", "messages", "batches"]
                               and (len(parts) == 5 or parts[5] in ACTIONS))
    if known:
        return error_response(request, 405, f"Method {request.method} is not allowed for {path}.")
    return error_response(request, 404, f"Unknown request URL: {request.method} {request.url.path}.")
