"""``kind = "http"`` intakes (docs/intake.md): one request in, a ticket out; the ticket's status and result.

``POST /v1/freight/intake/{name}``: the body is one message (``body``, optional ``custom_id``, ``url``,
``deadline``); 202 with ``{"id", "status": "queued"}`` and a ``Location`` header. An ``Idempotency-Key``
header makes a retried POST answer the same ticket (the message is kept once); the same key with a
different message is a 422 ``idempotency_key_reused``. A malformed message is a
400 at once (nothing kept). ``GET /v1/freight/intake/{name}/{ticket_id}``: ``status`` is ``queued``
until the result is there, then ``completed`` (a response) or ``failed`` (an error), with ``result``,
the request's output or error file line.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from freight.api.openai_files import _project, _runtime
from freight.domain.errors import InvalidInput, NotFound, Unprocessable
from freight.domain.intake import Rejected, message_key
from freight.intake.core import Intake

router = APIRouter()
PREFIX = "/v1/freight/intake"


def _intake(request: Request, name: str) -> Intake:
    for intake, _ in _runtime(request).intakes:
        if intake.name == name and intake.settings.kind == "http" and intake.settings.project == _project(request):
            return intake
    raise NotFound(f"No HTTP intake named {name!r}.", param="name")


@router.post(PREFIX + "/{name}")
async def submit(request: Request, name: str) -> JSONResponse:
    intake = _intake(request, name)
    payload = await request.body()
    key = request.headers.get("idempotency-key")
    ticket = "itk_" + (hashlib.sha256(key.encode()).hexdigest()[:24] if key else uuid.uuid4().hex[:24])
    parsed = intake.parse(ticket, payload)
    if isinstance(parsed, Rejected):
        raise InvalidInput(parsed.message, code=parsed.code, param=parsed.param)
    if key:
        kept = await run_in_threadpool(intake.store.get_intake, name, message_key(ticket))
        if kept is not None and (kept.body, kept.custom_id, kept.url) != (parsed.body_text, parsed.custom_id,
                                                                          parsed.url):
            # A retry must repeat its request; another request under the same key would get the first's ticket.
            raise Unprocessable("This Idempotency-Key was already used for a different message; use a new key "
                                "for a new message.", param="Idempotency-Key", code="idempotency_key_reused")
    await run_in_threadpool(intake.accept, ticket, payload)
    return JSONResponse({"id": ticket, "object": "freight.intake.ticket", "status": "queued"}, status_code=202,
                        headers={"location": f"{PREFIX}/{name}/{ticket}"})


@router.get(PREFIX + "/{name}/{ticket_id}")
async def ticket(request: Request, name: str, ticket_id: str) -> JSONResponse:
    intake = _intake(request, name)

    def look() -> tuple[str | None, bytes | None]:
        m = intake.store.get_intake(name, ticket_id)
        if m is None:
            raise NotFound(f"No ticket {ticket_id!r} in intake {name!r}.", param="ticket_id")
        return m.batch_id, intake.result_of(m)

    batch_id, line = await run_in_threadpool(look)
    result = json.loads(line) if line is not None else None
    status = "queued" if result is None else ("failed" if result.get("error") else "completed")
    return JSONResponse({"id": ticket_id, "object": "freight.intake.ticket", "status": status, "batch_id": batch_id,
                         "result": result})
