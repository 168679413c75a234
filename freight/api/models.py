"""/v1/models, and real-time requests to any served model (try a prompt before a batch)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from freight.api import openapi_docs
from freight.api.errors import error_response, retry_headers
from freight.api.openai_files import _runtime
from freight.api.params import json_body
from freight.domain.requests import Failure
from freight.ports import on_behalf_of
from freight.wire import openai

router = APIRouter()
log = logging.getLogger("freight.api")
_STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    models = [openai.model_object(m.id, _STARTED, m.owned_by, m.endpoints) for m in _runtime(request).catalog.models()]
    return JSONResponse({"object": "list", "data": models})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    for m in _runtime(request).catalog.models():
        if m.id == model_id:
            return JSONResponse(openai.model_object(m.id, _STARTED, m.owned_by, m.endpoints))
    return error_response(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")


async def _realtime(request: Request, endpoint: str) -> Response:
    body = await json_body(request, max_bytes=32 * 1024 * 1024)
    if not isinstance(body, dict):
        return error_response(400, "The request body must be a JSON object.", code="invalid_request")
    if body.get("stream") is True:
        return error_response(400, "Streaming is not supported by this server.", param="stream",
                              code="streaming_unsupported")
    model = body.get("model")
    if not isinstance(model, str):
        return error_response(400, "Missing required parameter: 'model'.", param="model",
                              code="missing_required_parameter")
    catalog = _runtime(request).catalog
    if (batch_only := catalog.batch_only(model)) is not None:
        return error_response(400, batch_only, param="model", code="batch_only_model")
    problem = catalog.check(model, endpoint)
    backend = catalog.backend_for(model)
    if problem is not None or backend is None:
        return error_response(404, problem or "unknown model", param="model", code="model_not_found")
    try:
        await backend.start()  # loads the model if the engine has not yet (a no-op once it is loaded)
        with on_behalf_of(request.state.project):  # the result cache's scope (docs/cache.md)
            (result,) = await backend.execute(endpoint, [body])
    except Exception as exc:  # as the engine does: a backend that raises is a model failure, not a crash
        log.warning("backend call failed", exc_info=True)
        return error_response(503, f"The model could not answer: {type(exc).__name__}: {exc}", "server_error",
                              code="backend_error")
    if isinstance(result, Failure):
        return error_response(503, f"The model could not answer: {result.message}", "server_error",
                              code=result.code)
    if result.status_code is None:  # no answer to show: an answer that failed its schema check (output_invalid)
        return error_response(502, result.error_message or "The model gave no usable answer.", "server_error",
                              code=result.error_code)
    return Response(result.body or b"{}", status_code=result.status_code, media_type="application/json",
                    headers=retry_headers(result.status_code))


@router.post("/v1/embeddings", openapi_extra=openapi_docs.REALTIME)
async def embeddings(request: Request) -> Response:
    return await _realtime(request, "/v1/embeddings")


@router.post("/v1/chat/completions", openapi_extra=openapi_docs.REALTIME)
async def chat_completions(request: Request) -> Response:
    return await _realtime(request, "/v1/chat/completions")


@router.post("/v1/completions", openapi_extra=openapi_docs.REALTIME)
async def completions(request: Request) -> Response:
    return await _realtime(request, "/v1/completions")
