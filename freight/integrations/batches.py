"""What every pipeline adapter does with a batch: build its lines, judge how it ended, summarise it.

Library-free (it is shared by the Airflow, Dagster and dbt adapters), talking to freight through
:mod:`freight.client` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freight.client import TERMINAL, Client, from_dataframe

CHAT = "/v1/chat/completions"
#: How a batch can end without having run its requests.
UNSUCCESSFUL = frozenset({"failed", "expired", "cancelled"})


#: The distinct errors a BatchNotCompleted's message lists (its ``batch`` has them all).
MESSAGES_SHOWN = 5


class BatchNotCompleted(RuntimeError):
    """The batch ended ``failed``, ``expired`` or ``cancelled`` and the caller asked to fail on that."""

    def __init__(self, batch: Mapping[str, Any]):
        errors = (batch.get("errors") or {}).get("data") or []
        messages = list(dict.fromkeys(str(e.get("message")).rstrip(".") for e in errors if isinstance(e, Mapping)))
        why = "; ".join(messages[:MESSAGES_SHOWN])  # (each once: one bad model repeats on every line)
        if len(messages) > MESSAGES_SHOWN:
            why += f"; and {len(messages) - MESSAGES_SHOWN} more"
        super().__init__(f"freight batch {batch.get('id')} ended {batch.get('status')}" + (f": {why}" if why else ""))
        self.batch = dict(batch)


def fail_on_of(value: Iterable[str] | None) -> frozenset[str]:
    """The end states a pipeline step fails on (default: all three unsuccessful ones), checked."""
    states = UNSUCCESSFUL if value is None else frozenset([value] if isinstance(value, str) else value)
    unknown = states - UNSUCCESSFUL
    if unknown:
        raise ValueError(f"fail_on takes {sorted(UNSUCCESSFUL)}, got {sorted(unknown)}")
    return states


def check_ended(batch: Mapping[str, Any], fail_on: frozenset[str]) -> None:
    if batch.get("status") not in TERMINAL:
        raise ValueError(f"freight batch {batch.get('id')} has not ended: {batch.get('status')}")
    if batch.get("status") in fail_on:
        raise BatchNotCompleted(batch)


def lines_of(rows: Any, *, model: str | None = None, template: str | None = None,
             endpoint: str | None = None, id_column: str | None = None,
             body: Mapping[str, Any] | None = None) -> Any:
    """What :meth:`freight.client.Client.submit` takes, from a pipeline's data.

    With ``template``: one request per row of a data frame or list of dicts (``from_dataframe``).
    Without: ``rows`` is a JSONL path, or a list of batch lines (dicts with ``body``) or of request
    bodies; ``model`` and ``body`` fill in what a body lacks, ``endpoint`` is a bare body's URL (default
    chat completions; batch lines and a JSONL file keep their own)."""
    if template is not None:
        if model is None:
            raise ValueError("a template needs a model")
        return from_dataframe(rows, model=model, template=template, endpoint=endpoint or CHAT, id_column=id_column,
                              **dict(body or {}))
    if isinstance(rows, str | Path):
        return rows
    records: Sequence[Mapping[str, Any]] = rows if isinstance(rows, list) else _records(rows)
    lines = []
    for i, item in enumerate(records):
        if not isinstance(item, Mapping):
            raise ValueError(f"request {i} is a {type(item).__name__}, not a dict")
        line: dict[str, Any] = dict(item) if "body" in item else {"custom_id": str(i), "method": "POST",
                                                                   "url": endpoint or CHAT, "body": dict(item)}
        if not isinstance(line["body"], Mapping):
            raise ValueError(f"request {i}: body is a {type(line['body']).__name__}, not a dict")
        request = {**(body or {}), **line["body"]}
        if model is not None:
            request.setdefault("model", model)
        lines.append({**line, "body": request})
    if not lines:
        raise ValueError("no requests to submit")
    return lines


def _records(frame: Any) -> list[dict[str, Any]]:
    if hasattr(frame, "to_dicts"):
        records: list[dict[str, Any]] = frame.to_dicts()
        return records
    if hasattr(frame, "to_dict"):
        return list(frame.to_dict(orient="records"))
    raise ValueError(f"cannot read requests from a {type(frame).__name__}")


def summary(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Where a batch's results are and what it cost: the fields a pipeline step hands on."""
    counts = batch.get("request_counts") or {}
    extension = batch.get("freight") or {}
    return {
        "batch_id": batch.get("id"),
        "status": batch.get("status"),
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "total": counts.get("total", 0),
        "completed": counts.get("completed", 0),
        "failed": counts.get("failed", 0),
        "cost_usd": extension.get("cost_usd"),
    }


def enrich(frame: Any, *, model: str, template: str, url: str | None = None, api_key: str | None = None,
           endpoint: str = "/v1/chat/completions", column: str = "answer", completion_window: str = "24h",
           body: Mapping[str, Any] | None = None, extra_body: Mapping[str, Any] | None = None,
           poll_s: float = 1.0, timeout_s: float | None = None) -> Any:
    """``frame`` (pandas) with a new ``column``: each row's answer from one freight batch.

    The rows go to freight as one batch (``template`` formatted with each row), this waits for it,
    and the answers come back in row order (``None`` where a request failed). Raises
    :class:`BatchNotCompleted` if the batch fails, expires or is cancelled. Used by the dbt example
    (examples/dbt) and usable from any pandas code."""
    lines = lines_of(frame, model=model, template=template, endpoint=endpoint, body=body)
    with Client(url, api_key) as client:
        batch = client.submit(lines, endpoint=endpoint, completion_window=completion_window, extra_body=extra_body)
        batch = client.wait(batch["id"], poll_s=poll_s, timeout_s=timeout_s)
        check_ended(batch, UNSUCCESSFUL)
        by_id = {row["custom_id"]: row for row in client.results(batch["id"])}
    import pandas

    out = frame.copy()
    # (object dtype: a failed request's answer stays None; pandas 3 would make a text column's None NaN)
    out[column] = pandas.Series([by_id.get(str(i), {}).get("answer") for i in range(len(lines))], index=out.index,
                                dtype=object)
    return out
