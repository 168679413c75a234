"""OpenAI Files and Batches objects, list pages and error envelopes, field for field.

shared/reference/batch-apis.md §1–§2: every optional key is sent, ``null`` when unset; file ids
are never ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from freight.domain.batches import Batch
from freight.domain.files import File
from freight.wire.extensions import batch_extension


def file_object(f: File) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": str(f.status),
        "expires_at": f.expires_at,
        "status_details": f.status_details,
    }


def file_deleted(file_id: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}


def batch_object(b: Batch, freight: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's Batch object; ``freight``: freight's extension object (services/cost.py renders it)."""
    errors = None
    if b.errors:
        errors = {
            "object": "list",
            "data": [{"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in b.errors],
        }
    out = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": str(b.status),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.request_counts.total,
            "completed": b.request_counts.completed,
            "failed": b.request_counts.failed,
        },
        "metadata": b.metadata,
        "model": b.model,
        "usage": {
            "input_tokens": b.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": b.usage.cached_tokens},
            "output_tokens": b.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": b.usage.reasoning_tokens},
            "total_tokens": b.usage.total_tokens,
        },
        "freight": batch_extension(b),
    }
    if freight is not None:  # the figures the services add (cost, progress) beside the batch's own fields
        out["freight"] = {**batch_extension(b), **freight}
    return out


def list_page(data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def error_envelope(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def model_object(model_id: str, created: int, owned_by: str = "freight",
                 endpoints: Iterable[str] = ()) -> dict[str, Any]:
    """OpenAI's Model object, plus freight's extension under its one key ``freight``: the endpoints
    the model serves (sorted), for a batch's ``endpoint`` or a real-time request."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by,
            "freight": {"endpoints": sorted(endpoints)}}
