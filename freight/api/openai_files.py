"""OpenAI Files API: /v1/files (shared/reference/batch-apis.md §1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from freight.api import openapi_docs
from freight.api.params import choice_param, idempotency_key, int_param, str_param
from freight.api.uploads import drain, receive_upload
from freight.domain.errors import InvalidInput
from freight.domain.files import ALL_PURPOSES
from freight.runtime import Runtime
from freight.wire import openai

router = APIRouter()
CONTENT_CHUNK = 1 << 20


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _project(request: Request) -> str:
    project: str = request.state.project
    return project


@router.post("/v1/files", openapi_extra=openapi_docs.CREATE_FILE)
async def create_file(request: Request) -> JSONResponse:
    rt = _runtime(request)
    key = idempotency_key(request)
    if key is not None:
        earlier = await run_in_threadpool(rt.files.find, _project(request), key)
        if earlier is not None:
            await drain(request, rt.files.limits.max_upload_bytes)
            return JSONResponse(openai.file_object(earlier))
    upload = await receive_upload(request, rt.files)
    try:
        purpose = rt.files.check_purpose(upload.fields.get("purpose"))
        if upload.writer is None or upload.file_id is None:
            raise InvalidInput("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        expires_after_s = None
        if "expires_after[seconds]" in upload.fields or "expires_after[anchor]" in upload.fields:
            anchor = upload.fields.get("expires_after[anchor]", "created_at")
            if anchor != "created_at":
                raise InvalidInput("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor",
                                   code="invalid_value")
            try:
                expires_after_s = int(upload.fields.get("expires_after[seconds]", ""))
            except ValueError:
                raise InvalidInput("expires_after[seconds] must be an integer.", param="expires_after.seconds",
                                   code="invalid_value") from None
        f = await run_in_threadpool(
            rt.files.finish_upload, _project(request), upload.file_id, upload.writer,
            filename=upload.filename or "upload.jsonl", purpose=purpose, expires_after_s=expires_after_s,
            idempotency_key=key)
    except BaseException:
        if upload.writer is not None:
            upload.writer.abort()
        raise
    return JSONResponse(openai.file_object(f))


@router.get("/v1/files", openapi_extra=openapi_docs.LIST_FILES)
async def list_files(request: Request) -> JSONResponse:
    rt = _runtime(request)
    limit = int_param(request, "limit", 10_000, 1, 10_000)
    order = choice_param(request, "order", "desc", ("asc", "desc")) or "desc"
    purpose = choice_param(request, "purpose", None, tuple(sorted(ALL_PURPOSES)))
    page = await run_in_threadpool(rt.files.list, _project(request), purpose=purpose,
                                   after=str_param(request, "after"), limit=limit, order=order)
    return JSONResponse(openai.list_page([openai.file_object(f) for f in page.items], page.has_more))


@router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> JSONResponse:
    f = await run_in_threadpool(_runtime(request).files.get, _project(request), file_id)
    return JSONResponse(openai.file_object(f))


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> JSONResponse:
    await run_in_threadpool(_runtime(request).files.delete, _project(request), file_id)
    return JSONResponse(openai.file_deleted(file_id))


def _iter_file(fh: IO[bytes]) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(CONTENT_CHUNK):
            yield chunk


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> StreamingResponse:
    f, fh = await run_in_threadpool(_runtime(request).files.open_content, _project(request), file_id)
    media = "application/jsonl" if f.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(_iter_file(fh), media_type=media, headers={"content-length": str(f.bytes)})
