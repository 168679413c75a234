"""The ASGI application: create_app(runtime) wires the routes, errors and the embedded engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from freight import __version__
from freight.api import anthropic_batches, intake, metrics, models, openai_batches, openai_files, webhooks
from freight.api.access_log import AccessLog
from freight.api.dashboard import auth as dashboard_auth
from freight.api.dashboard import router as dashboard_router
from freight.api.errors import error_response, install_error_handlers
from freight.domain import ids
from freight.intake.runner import run_intakes
from freight.runtime import Runtime

log = logging.getLogger("freight.api")

#: Paths anyone may call, with or without a key.
OPEN_PATHS = frozenset({"/health"})


def presented_key(request: Request) -> str | None:
    """The API key of a request: ``Authorization: Bearer …`` (OpenAI) or ``X-Api-Key`` (Anthropic)."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def unauthorized(has_key: bool) -> JSONResponse:
    if has_key:
        message = "Incorrect API key provided. Create one with `freight keys create --project NAME`."
    else:
        message = ("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                   "(or 'X-Api-Key: YOUR_KEY').")
    response = error_response(401, message, "authentication_error", code="invalid_api_key")
    response.headers["www-authenticate"] = 'Bearer realm="freight"'
    return response


def create_app(runtime: Runtime, *, run_engine: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop)) if run_engine else None
        intakes = asyncio.create_task(run_intakes(runtime.intakes, stop)) if runtime.intakes else None
        if not run_engine:
            for backend in runtime.catalog.backends:
                await backend.start()
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            if intakes is not None:
                await intakes
            for backend in runtime.catalog.backends:
                await backend.close()

    app = FastAPI(title="freight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    install_error_handlers(app)

    @app.middleware("http")
    async def request_ids(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = ids.new_request_id()
        request.state.request_id = request_id
        response: Response
        try:
            token = presented_key(request)
            # The dashboard (and only it) also reads its sign-in cookie; its pages send a person
            # without a valid key to its sign-in form rather than answering 401 here.
            in_dashboard = dashboard_auth.is_dashboard_path(request.url.path)
            if token is None and in_dashboard:
                token = dashboard_auth.cookie_key(request)
            project = await run_in_threadpool(runtime.keys.project_for, token)
            if project is None and request.url.path not in OPEN_PATHS and not in_dashboard:
                log.debug("request refused: %s", "invalid API key" if token is not None else "no API key",
                          extra={"event": "unauthorized", "request_id": request_id})
                response = unauthorized(token is not None)
            else:
                request.state.project = project
                response = await call_next(request)
        except Exception:
            # Handlers for Exception run outside this middleware, where the ids would be lost.
            log.exception("unhandled error", extra={"request_id": request_id})
            response = error_response(500, "The server had an error while processing your request.", "server_error")
        if isinstance(response, JSONResponse) and anthropic_batches.is_anthropic_path(request.url.path):
            response = anthropic_batches.reshape_error(request, response)  # Anthropic's error envelope
        response.headers["x-request-id"] = request_id
        response.headers["request-id"] = request_id
        return response

    # Outermost: it sees the final status, the request id and the project set above.
    app.add_middleware(AccessLog)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    app.include_router(openai_files.router)
    app.include_router(openai_batches.router)
    app.include_router(models.router)
    app.include_router(anthropic_batches.router)
    app.include_router(webhooks.router)
    app.include_router(metrics.router)
    app.include_router(intake.router)
    app.include_router(dashboard_router)
    return app
