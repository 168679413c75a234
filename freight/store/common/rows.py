"""Domain records from result rows, and query parameters from domain records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from freight.domain.batches import Batch, BatchError, BatchStatus, RequestCounts, Usage
from freight.domain.files import File, FileStatus
from freight.domain.lanes import LaneSub, SubState
from freight.domain.message_batches import EndedCounts, MessageBatch
from freight.domain.requests import Result
from freight.domain.status_changes import STAMP_FIELDS
from freight.ports.records import StoredResult
from freight.wire import jsonx

from .db import Row


def batch_from_row(row: Row) -> Batch:
    errors = None
    if row["errors"]:
        errors = [BatchError(**e) for e in jsonx.loads(row["errors"])]
    return Batch(
        id=row["id"],
        project=row["project"],
        endpoint=row["endpoint"],
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        status=BatchStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        in_progress_at=row["in_progress_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        expired_at=row["expired_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        errors=errors,
        metadata=jsonx.loads(row["metadata"]) if row["metadata"] else None,
        model=row["model"],
        request_counts=RequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"]),
        usage=Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"]),
        output_expires_after_s=row["output_expires_after_s"],
        max_cost_usd=row["max_cost_usd"],
        output_schema=jsonx.loads(row["output_schema"]) if row["output_schema"] else None,
        invalid_outputs=row["invalid_outputs"],
        priority=row["priority"],
        paused_at=row["paused_at"],
        use_cache=bool(row["use_cache"]),
        cached=row["cached"],
        saved_input_tokens=row["saved_input_tokens"],
        saved_output_tokens=row["saved_output_tokens"],
        schedule=row["schedule"],
        not_before=row["not_before"],
    )


def batch_params(b: Batch, idempotency_key: str | None) -> dict[str, Any]:
    return {"id": b.id, "project": b.project, "endpoint": b.endpoint, "input_file_id": b.input_file_id,
            "completion_window": b.completion_window, "status": str(b.status), "created_at": b.created_at,
            "expires_at": b.expires_at,
            "metadata": jsonx.dumps(b.metadata).decode() if b.metadata is not None else None,
            "output_expires_after_s": b.output_expires_after_s, "idempotency_key": idempotency_key,
            "max_cost_usd": b.max_cost_usd,
            "output_schema": jsonx.dumps(b.output_schema).decode() if b.output_schema is not None else None,
            "priority": b.priority, "use_cache": int(b.use_cache),
            "schedule": b.schedule, "not_before": b.not_before}


def stamps_of(row: Row) -> dict[str, int | None]:
    return {k: row[k] for k in STAMP_FIELDS}


def file_from_row(row: Row) -> File:
    return File(
        id=row["id"],
        project=row["project"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        status=FileStatus(row["status"]),
        status_details=row["status_details"],
        lines=row["lines"],
    )


def file_params(f: File, blob_key: str, idempotency_key: str | None = None) -> dict[str, Any]:
    return {"id": f.id, "project": f.project, "filename": f.filename, "purpose": f.purpose, "bytes": f.bytes,
            "created_at": f.created_at, "expires_at": f.expires_at, "status": str(f.status),
            "status_details": f.status_details, "blob_key": blob_key, "lines": f.lines,
            "idempotency_key": idempotency_key}


def stored_results(rows: Sequence[tuple[Any, ...]]) -> list[StoredResult]:
    """The rows of the ``results`` statements (batches.sql), read as tuples: idx, custom_id, then a result's
    columns in ``RESULT_COLUMNS``' order."""
    return [StoredResult(idx, custom_id, Result(status_code, bytes(body) if body is not None else None, request_id,
                                                error_code, error_message, input_tokens, output_tokens))
            for idx, custom_id, status_code, body, request_id, error_code, error_message, input_tokens, output_tokens
            in rows]


#: A result's columns in the requests table, each with what reads it from a ``Result``.
RESULT_COLUMNS: dict[str, Callable[[Result], Any]] = {
    "status_code": attrgetter("status_code"), "response_body": attrgetter("body"),
    "request_id": attrgetter("request_id"), "error_code": attrgetter("error_code"),
    "error_message": attrgetter("error_message"), "input_tokens": attrgetter("input_tokens"),
    "output_tokens": attrgetter("output_tokens")}


def result_params(r: Result) -> dict[str, Any]:
    return {column: get(r) for column, get in RESULT_COLUMNS.items()}


def result_columns(results: Sequence[Result]) -> dict[str, list[Any]]:
    """``result_params`` of many results, by column (``Tx.bulk``)."""
    return {column: list(map(get, results)) for column, get in RESULT_COLUMNS.items()}


def lane_sub_from_row(row: Row) -> LaneSub:
    return LaneSub(id=row["id"], batch_id=row["batch_id"], round=row["round"], state=SubState(row["state"]),
                   requests=row["requests"], bytes=row["bytes"], created_at=row["created_at"],
                   upload_id=row["upload_id"], upstream_id=row["upstream_id"],
                   create_sent_at=row["create_sent_at"], upstream_status=row["upstream_status"],
                   completed=row["completed"], failed=row["failed"], cancel_sent=bool(row["cancel_sent"]))


def lane_sub_params(sub: LaneSub) -> dict[str, Any]:
    return {"id": sub.id, "batch_id": sub.batch_id, "round": sub.round, "state": str(sub.state),
            "requests": sub.requests, "bytes": sub.bytes, "created_at": sub.created_at, "upload_id": sub.upload_id,
            "upstream_id": sub.upstream_id, "create_sent_at": sub.create_sent_at,
            "upstream_status": sub.upstream_status, "completed": sub.completed, "failed": sub.failed,
            "cancel_sent": int(sub.cancel_sent)}


def message_batch_from_row(row: Row) -> MessageBatch:
    ended = None
    if row["m_succeeded"] is not None:
        ended = EndedCounts(succeeded=row["m_succeeded"], errored=row["m_errored"], canceled=row["m_canceled"],
                            expired=row["m_expired"])
    return MessageBatch(batch=batch_from_row(row), requests=row["m_requests"], ended=ended)
