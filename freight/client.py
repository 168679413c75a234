"""A Python client for freight's batch workbench: submit, wait, results as rows or data frames.

    from freight.client import Client, from_dataframe

    client = Client("http://127.0.0.1:8080")            # api_key=... when the server has keys
    lines = from_dataframe(df, model="gpt-4o-mini", template="Summarize: {text}", id_column="id")
    batch = client.submit(lines, max_cost_usd=5.0)
    batch = client.wait(batch["id"])
    frame = client.to_dataframe(batch["id"])            # pandas; library="polars" for polars

``AsyncClient`` has the same methods, awaited. pandas/polars are optional (``pip install
'freight[data]'``). Rows: freight/wire/results_table.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from freight.wire import jsonx
from freight.wire.results_table import COLUMNS, rows_of

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Where a template's text goes, per endpoint.
_TEMPLATE_TARGET = {"/v1/embeddings": "input", "/v1/completions": "prompt", "/v1/responses": "input"}


class FreightError(RuntimeError):
    def __init__(self, status: int, body: Any):
        message = body.get("error", {}).get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def _base(url: str | None) -> str:
    url = (url or os.environ.get("FREIGHT_URL") or "http://127.0.0.1:8080").rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("FREIGHT_API_KEY")
    if key and not key.isascii():  # (an HTTP header is ASCII; a pasted "…" placeholder is not)
        raise ValueError("the API key has characters that are not ASCII; freight's keys are ASCII "
                         "(is it a placeholder such as '…'?)")
    return {"Authorization": f"Bearer {key}"} if key else {}


def from_dataframe(df: Any, *, model: str, template: str, endpoint: str = "/v1/chat/completions",
                   id_column: str | None = None, **body: Any) -> list[dict[str, Any]]:
    """Batch lines from rows: ``template`` (``str.format`` with the row's columns) becomes the user
    message (chat), the input (embeddings, responses) or the prompt (completions); ``custom_id`` is
    ``id_column``'s value, else the row number; ``body`` adds fixed parameters (``max_tokens``…)."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str (a str.format pattern such as 'Summarize: {{text}}'), "
                        f"got {type(template).__name__}")
    if isinstance(df, str | Path | bytes):
        raise TypeError("a template is filled from rows (a data frame or a list of dicts); a JSONL file of "
                        "requests is submitted as it is, without a template")
    records = _records(df)
    lines = []
    for i, row in enumerate(records):
        try:
            text = template.format(**row)
        except KeyError as exc:
            raise ValueError(f"row {i}: the template names {{{exc.args[0]}}}, which is not one of its columns "
                             f"({', '.join(map(str, row))})") from None
        target = _TEMPLATE_TARGET.get(endpoint)
        content: dict[str, Any] = ({target: text} if target else {"messages": [{"role": "user", "content": text}]})
        if id_column is not None and id_column not in row:
            raise ValueError(f"row {i}: no id_column {id_column!r} among its columns ({', '.join(map(str, row))})")
        custom_id = str(row[id_column]) if id_column is not None else str(i)
        lines.append({"custom_id": custom_id, "method": "POST", "url": endpoint,
                      "body": {"model": model, **content, **body}})
    return lines


def _records(df: Any) -> list[dict[str, Any]]:
    if hasattr(df, "to_dicts"):  # polars
        records: list[dict[str, Any]] = df.to_dicts()
        return records
    if hasattr(df, "to_dict"):  # pandas
        return list(df.to_dict(orient="records"))
    try:
        return [dict(r) for r in df]
    except (TypeError, ValueError):
        raise TypeError(f"rows must be a pandas or polars data frame or a list of dicts, got {type(df).__name__}") \
            from None


def _lines_bytes(source: Any) -> tuple[bytes, str | None]:
    """(JSONL bytes, the endpoint of its first line) of a path, a list of lines or bodies, or a frame."""
    if isinstance(source, str | Path):
        data = Path(source).read_bytes()
        first = next((ln for ln in data.splitlines() if ln.strip()), b"{}")
        url = jsonx.loads(first).get("url")
        return data, url if isinstance(url, str) else None
    items: Sequence[Mapping[str, Any]] = source if isinstance(source, list) else _records(source)
    lines = []
    for i, item in enumerate(items):
        line = dict(item) if "body" in item else {"custom_id": str(i), "method": "POST",
                                                    "url": "/v1/chat/completions", "body": dict(item)}
        lines.append(line)
    url = lines[0].get("url") if lines else None
    return b"".join(jsonx.dumps(line) + b"\n" for line in lines), url if isinstance(url, str) else None


def _create_body(file_id: str, endpoint: str, completion_window: str, metadata: Mapping[str, str] | None,
                 max_cost_usd: float | None, output_schema: Mapping[str, Any] | None,
                 extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {**(extra_body or {}), "input_file_id": file_id, "endpoint": endpoint,
                            "completion_window": completion_window}
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if max_cost_usd is not None:
        body["max_cost_usd"] = max_cost_usd
    if output_schema is not None:
        body["output_schema"] = dict(output_schema)
    return body


def to_frame(rows: list[dict[str, Any]], library: str = "pandas") -> Any:
    if library == "pandas":
        import pandas

        return pandas.DataFrame(rows, columns=list(rows[0]) if rows else list(COLUMNS))
    if library == "polars":
        import polars

        return polars.DataFrame(rows, schema=list(rows[0]) if rows else list(COLUMNS), strict=False)
    raise ValueError(f"library must be 'pandas' or 'polars', got {library!r}")


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise FreightError(response.status_code, body)
    return response.json()


def _requests_of(data: bytes) -> dict[str, dict[str, Any]]:
    out = {}
    for raw in data.splitlines():
        if raw.strip():
            line = jsonx.loads(raw)
            if isinstance(line, dict) and isinstance(line.get("body"), dict):
                out[str(line.get("custom_id"))] = line["body"]
    return out


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60):
        self.http = httpx.Client(base_url=_base(url), headers=_headers(api_key), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, source: Any, *, endpoint: str | None = None, completion_window: str = "24h",
               metadata: Mapping[str, str] | None = None, max_cost_usd: float | None = None,
               output_schema: Mapping[str, Any] | None = None,
               extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Upload ``source`` (a JSONL path, a list of lines or of bodies, or a data frame of lines) and
        create a batch; the Batch object. ``extra_body`` adds create parameters (``priority``…)."""
        data, url = _lines_bytes(source)
        f = _json(self.http.post("/files", files={"file": ("input.jsonl", data, "application/jsonl")},
                                 data={"purpose": "batch"}))
        body = _create_body(f["id"], endpoint or url or "/v1/chat/completions", completion_window, metadata,
                            max_cost_usd, output_schema, extra_body)
        batch: dict[str, Any] = _json(self.http.post("/batches", json=body))
        return batch

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        batch: dict[str, Any] = _json(self.http.get(f"/batches/{batch_id}"))
        return batch

    def wait(self, batch_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.retrieve(batch_id)
            if batch["status"] in TERMINAL:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch['status']}")
            time.sleep(poll_s)

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's ``output_file_id`` or ``error_file_id``: JSONL)."""
        r = self.http.get(f"/files/{file_id}/content")
        if r.status_code >= 400:
            _json(r)
        return r.content

    def partial(self, batch_id: str, after: int = -1) -> list[dict[str, Any]]:
        """Every line finished so far (output and error lines, in input order) past input index ``after``."""
        lines: list[dict[str, Any]] = []
        while True:
            r = self.http.get(f"/batches/{batch_id}/partial", params={"after": after, "limit": 10_000})
            if r.status_code >= 400:
                _json(r)
            lines.extend(jsonx.loads(raw) for raw in r.content.splitlines() if raw.strip())
            if r.headers.get("freight-has-more") != "true":
                return lines
            after = int(r.headers["freight-last-index"])

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        """One row per finished request, in input order (freight/wire/results_table.py)."""
        batch = self.retrieve(batch_id)
        data = self.http.get(f"/files/{batch['input_file_id']}/content")
        requests = _requests_of(data.content) if data.status_code < 400 else {}
        ext = batch.get("freight") or {}
        return rows_of(self.partial(batch_id), requests, ext.get("rates"), ext.get("output_schema") is not None)

    def to_dataframe(self, batch_id: str, library: str = "pandas") -> Any:
        return to_frame(self.results(batch_id), library)


class AsyncClient:
    """``Client``, awaited."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60):
        self.http = httpx.AsyncClient(base_url=_base(url), headers=_headers(api_key), timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(self, source: Any, *, endpoint: str | None = None, completion_window: str = "24h",
                     metadata: Mapping[str, str] | None = None, max_cost_usd: float | None = None,
                     output_schema: Mapping[str, Any] | None = None,
                     extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data, url = _lines_bytes(source)
        f = _json(await self.http.post("/files", files={"file": ("input.jsonl", data, "application/jsonl")},
                                       data={"purpose": "batch"}))
        body = _create_body(f["id"], endpoint or url or "/v1/chat/completions", completion_window, metadata,
                            max_cost_usd, output_schema, extra_body)
        batch: dict[str, Any] = _json(await self.http.post("/batches", json=body))
        return batch

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        batch: dict[str, Any] = _json(await self.http.get(f"/batches/{batch_id}"))
        return batch

    async def wait(self, batch_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = await self.retrieve(batch_id)
            if batch["status"] in TERMINAL:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch['status']}")
            await asyncio.sleep(poll_s)

    async def file_content(self, file_id: str) -> bytes:
        r = await self.http.get(f"/files/{file_id}/content")
        if r.status_code >= 400:
            _json(r)
        return r.content

    async def partial(self, batch_id: str, after: int = -1) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        while True:
            r = await self.http.get(f"/batches/{batch_id}/partial", params={"after": after, "limit": 10_000})
            if r.status_code >= 400:
                _json(r)
            lines.extend(jsonx.loads(raw) for raw in r.content.splitlines() if raw.strip())
            if r.headers.get("freight-has-more") != "true":
                return lines
            after = int(r.headers["freight-last-index"])

    async def results(self, batch_id: str) -> list[dict[str, Any]]:
        batch = await self.retrieve(batch_id)
        data = await self.http.get(f"/files/{batch['input_file_id']}/content")
        requests = _requests_of(data.content) if data.status_code < 400 else {}
        ext = batch.get("freight") or {}
        return rows_of(await self.partial(batch_id), requests, ext.get("rates"), ext.get("output_schema") is not None)

    async def to_dataframe(self, batch_id: str, library: str = "pandas") -> Any:
        return to_frame(await self.results(batch_id), library)


def submit_lines(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """JSONL bytes of batch lines (for writing a file from ``from_dataframe``)."""
    return b"".join(jsonx.dumps(dict(line)) + b"\n" for line in lines)
