"""Query-string and body parsing with errors in the protocol's shape (not FastAPI's 422)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from freight.domain.errors import InvalidInput, PayloadTooLarge
from freight.domain.nesting import MAX_JSON_NESTING, too_deep_message
from freight.domain.text import storable
from freight.wire import jsonx
from freight.wire.json_stream import nests_deeper_than

MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_IDEMPOTENCY_KEY_CHARS = 255


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"Invalid value for '{name}': expected an integer, got {raw[:50]!r}.", param=name,
                           code="invalid_value") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"Invalid value for '{name}': must be between {lo} and {hi}, got {value}.", param=name,
                           code="invalid_value")
    return value


def choice_param(request: Request, name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise InvalidInput(f"Invalid value for '{name}': {raw[:50]!r}. Supported values are: {allowed}.",
                           param=name, code="invalid_value")
    return raw


def str_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw and not storable(raw):  # (no id holds one; PostgreSQL cannot even compare it)
        raise InvalidInput(f"Invalid value for '{name}': it contains a NUL character (U+0000).", param=name,
                           code="invalid_value")
    return raw or None


async def json_body(request: Request, max_bytes: int = MAX_JSON_BODY_BYTES) -> Any:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.", code="request_too_large")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        return {}
    if nests_deeper_than(data, MAX_JSON_NESTING):
        raise InvalidInput(too_deep_message("The request body"), code="nesting_too_deep")
    try:
        return jsonx.loads(data)
    except jsonx.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {jsonx.reason(exc)}.", code="invalid_json") from None


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: a retry with the same key (per project) gets the first answer."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters.",
                           param="Idempotency-Key", code="invalid_value")
    return key
