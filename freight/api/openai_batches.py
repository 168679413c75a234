"""OpenAI Batch API: /v1/batches (shared/reference/batch-apis.md §2)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from freight.api import openapi_docs
from freight.api.openai_files import _project, _runtime
from freight.api.params import idempotency_key, int_param, json_body, str_param
from freight.domain.batches import Batch
from freight.services import results
from freight.services.scheduling import BatchControl
from freight.wire import openai

router = APIRouter()


def _object(request: Request, batch: Batch) -> dict[str, Any]:
    return openai.batch_object(batch, _runtime(request).cost.freight_object(batch))


@router.post("/v1/batches", openapi_extra=openapi_docs.CREATE_BATCH)
async def create_batch(request: Request) -> JSONResponse:
    body = await json_body(request)
    key = idempotency_key(request)
    batch = await run_in_threadpool(_runtime(request).batches.create, _project(request), body, key)
    return JSONResponse(_object(request, batch))


@router.get("/v1/batches", openapi_extra=openapi_docs.LIST_BATCHES)
async def list_batches(request: Request) -> JSONResponse:
    limit = int_param(request, "limit", 20, 1, 100)
    page = await run_in_threadpool(_runtime(request).batches.list, _project(request),
                                   after=str_param(request, "after"), limit=limit)
    return JSONResponse(openai.list_page([_object(request, b) for b in page.items], page.has_more))


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> JSONResponse:
    batch = await run_in_threadpool(_runtime(request).batches.get, _project(request), batch_id)
    return JSONResponse(_object(request, batch))


@router.get("/v1/batches/{batch_id}/partial")
async def partial_results(request: Request, batch_id: str) -> Response:
    """freight's extension: the lines finished so far, in input order (services/results.py)."""
    after = int_param(request, "after", -1, -1, 2**62)
    limit = int_param(request, "limit", results.DEFAULT_LIMIT, 1, results.MAX_LIMIT)
    rt = _runtime(request)

    def read() -> results.PartialPage:
        return results.partial(rt.store, rt.batches.get(_project(request), batch_id), after, limit)

    page = await run_in_threadpool(read)
    return Response(page.body, media_type="application/jsonl", headers={
        "freight-lines": str(page.lines), "freight-complete-through": str(page.complete_through),
        "freight-last-index": "" if page.last_index is None else str(page.last_index),
        "freight-has-more": "true" if page.has_more else "false"})


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> JSONResponse:
    batch = await run_in_threadpool(_runtime(request).batches.cancel, _project(request), batch_id)
    return JSONResponse(_object(request, batch))


# ---- freight's extension routes: pause, resume, reprioritise (docs/scheduling.md) ----------------

def _control(request: Request) -> BatchControl:
    runtime = _runtime(request)
    return BatchControl(runtime.store, runtime.clock, runtime.engine.wake)


@router.post("/v1/batches/{batch_id}/pause")
async def pause_batch(request: Request, batch_id: str) -> JSONResponse:
    batch = await run_in_threadpool(_control(request).pause, _project(request), batch_id)
    return JSONResponse(_object(request, batch))


@router.post("/v1/batches/{batch_id}/resume")
async def resume_batch(request: Request, batch_id: str) -> JSONResponse:
    batch = await run_in_threadpool(_control(request).resume, _project(request), batch_id)
    return JSONResponse(_object(request, batch))


@router.post("/v1/batches/{batch_id}/priority")
async def set_batch_priority(request: Request, batch_id: str) -> JSONResponse:
    body = await json_body(request)
    batch = await run_in_threadpool(_control(request).set_priority, _project(request), batch_id, body)
    return JSONResponse(_object(request, batch))
