"""What the hand-parsed routes accept, for the OpenAPI schema (``/openapi.json``).

The routes read their bodies and query strings themselves (so that every error is in the
protocol's envelope, and uploads stream); FastAPI cannot see that, so each route declares its
request here through ``openapi_extra``. The schema drives the fuzzing tests (schemathesis).
"""

from __future__ import annotations

from typing import Any

from freight.domain.files import ALL_PURPOSES, UPLOAD_PURPOSES
from freight.services.batches import BATCH_ENDPOINTS

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A retry with the same key (per project) gets the object the first request made.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


CREATE_FILE: dict[str, Any] = {
    "parameters": [IDEMPOTENCY_KEY],
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": sorted(UPLOAD_PURPOSES)},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
        },
    }}}},
}

LIST_FILES: dict[str, Any] = {"parameters": [
    _query("after", {"type": "string"}, "A file id: the page after it."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "Page size (default 10,000)."),
    _query("order", {"type": "string", "enum": ["asc", "desc"]}, "By creation time (default desc)."),
    _query("purpose", {"type": "string", "enum": sorted(ALL_PURPOSES)}, "Only files of this purpose."),
]}

CREATE_BATCH: dict[str, Any] = {
    "parameters": [IDEMPOTENCY_KEY],
    "requestBody": _json_body({
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {
            "input_file_id": {"type": "string", "example": "file-0123456789abcdef01234567"},
            "endpoint": {"type": "string", "enum": list(BATCH_ENDPOINTS)},
            "completion_window": {"type": "string", "example": "24h", "pattern": "^[0-9]+(\\.[0-9]+)?[smhd]$"},
            "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                         "maxProperties": 16},
            "output_expires_after": {"type": "object", "required": ["anchor", "seconds"], "properties": {
                "anchor": {"type": "string", "enum": ["created_at"]},
                "seconds": {"type": "integer", "minimum": 3600, "maximum": 2592000},
            }, "additionalProperties": False},
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000, "description": "freight's extension"},
            "schedule": {"type": "string", "description": "freight's extension (docs/scheduling.md)"},
            "not_before": {"type": "integer", "description": "freight's extension: unix seconds"},
            "max_cost_usd": {"type": "number", "exclusiveMinimum": 0, "description": "freight's extension"},
            "output_schema": {"type": "object", "description": "freight's extension: a JSON schema"},
            "cache": {"type": ["boolean", "null"], "description": "freight's extension (docs/cache.md)"},
        },
        "additionalProperties": False,
    }),
}

LIST_BATCHES: dict[str, Any] = {"parameters": [
    _query("after", {"type": "string"}, "A batch id: the page after it (older)."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size (default 20)."),
]}

REALTIME: dict[str, Any] = {"requestBody": _json_body({
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array"]},
        "messages": {"type": "array", "items": {"type": "object"}},
        "prompt": {"type": ["string", "array"]},
    },
})}
