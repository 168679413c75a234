"""The one place that turns errors into HTTP responses in OpenAI's envelope.

Every response of the OpenAI-style API that is not a success is
``{"error": {"message", "type", "param", "code"}}`` with all four keys, and no traceback ever
reaches a client: anything unexpected is logged and answered with a generic 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from freight.domain.errors import FreightError
from freight.domain.quota import WAIT_FOR_BATCHES
from freight.wire.openai import error_envelope

log = logging.getLogger("freight.api")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


#: Answers that asking again will not change (a client's mistake, a missing key, a conflict): the official
#: SDKs read ``x-should-retry: false`` and give up at once (they retry 409, and 408, 429 and 5xx, by default).
DETERMINISTIC = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 422})


def retry_headers(status: int, code: str | None = None) -> dict[str, str]:
    """``x-should-retry: false`` for a ``DETERMINISTIC`` status, or a quota 429 that only finished batches lift
    (the SDKs would retry it within a second or two, then fail anyway); else nothing (the SDKs' own rules)."""
    return {"x-should-retry": "false"} if status in DETERMINISTIC or code in WAIT_FOR_BATCHES else {}


def error_response(status: int, message: str, error_type: str | None = None, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    headers = retry_headers(status, code)
    body = error_envelope(message, error_type or _STATUS_TYPES.get(status, "server_error"), param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def _debug(request: Request, status: int, code: str | None, message: str) -> None:
    """A request-level failure, at debug: why this request got its 4xx (the access log has the status)."""
    log.debug("request failed: %s: %s", f"{status} {code}" if code else status, message,
              extra={"event": "request_failed", "status": status, "code": code,
                     "request_id": getattr(request.state, "request_id", None)})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FreightError)
    async def freight_error(request: Request, exc: FreightError) -> JSONResponse:
        _debug(request, exc.status_code, exc.code, exc.message)
        if exc.status_code >= 500:
            log.error("internal error: %s", exc.message)
            if exc.public:
                return error_response(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)
            return error_response(500, "The server had an error while processing your request.", "server_error")
        return error_response(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.detail else "Request failed."
        if exc.status_code == 404:
            message = "Unknown request URL. Please check the URL and method."
        elif exc.status_code == 405:
            message = f"Method {request.method[:20]} is not allowed for this URL."
        _debug(request, exc.status_code, None, message)
        if request.url.path == "/v1/messages" or request.url.path.startswith("/v1/messages/"):
            # Routing errors (a method no route lists) on the Anthropic API: in its envelope too.
            from freight.api import anthropic_batches

            return anthropic_batches.error_response(request, exc.status_code, message)
        return error_response(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        _debug(request, 400, "invalid_value", str(first.get("msg", "invalid input")))
        return error_response(400, f"Invalid request: {first.get('msg', 'invalid input')}",
                              param=".".join(loc) or None, code="invalid_value")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "The server had an error while processing your request.", "server_error")
