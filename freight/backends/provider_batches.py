"""Batch lanes to providers' own batch APIs (``BatchLane``, driven by freight/engine/lanes.py).

``backend = "openai-batch"``: an OpenAI-compatible ``/v1/files`` + ``/v1/batches`` (OpenAI, or another
freight). ``backend = "anthropic-batch"``: Anthropic's ``/v1/messages/batches``. Both take::

    base_url = "https://provider.example/v1"   # openai-batch: up to /v1; anthropic-batch: the host
    api_key_env = "OPENAI_API_KEY"              # the key is read from this variable, once
    upstream_model = "gpt-4o-mini-2024-07-18"   # optional: the model name sent upstream
    max_requests_per_batch = 50000              # split limits (defaults: the provider's)
    max_bytes_per_batch = 209715200
    poll_interval_s = 30                        # first poll interval; backs off ×1.5 ...
    max_poll_interval_s = 300                   # ... up to this
    max_rounds = 3                              # submissions per request (expired/retryable ones again)
    cancel_timeout_s = 900                      # how long a cancel may take upstream
    completion_window = "24h"                   # openai-batch only: the upstream batches' window
    timeout_s = 600                             # one HTTP call

Recovery after a crash (shared with the runner, see freight/domain/lanes.py):

- openai-batch uploads each sub as ``freight-<sub id>.jsonl`` and creates it with
  ``metadata.freight_sub`` and an ``Idempotency-Key`` of the sub id; an upload or create whose answer
  was lost is found again by that file name, or by its input file id (exact);
- anthropic-batch has nothing to tag a batch with: a create whose answer was lost is found as the
  newest upstream batch created at most 30 s before it with the same number of requests (a
  heuristic: another client creating a batch of the same size at the same moment on the same account
  could be mistaken for it).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import IO, Any

import httpx

from freight.domain.durations import parse_duration_s
from freight.domain.errors import ConfigError
from freight.domain.ids import new_request_id, upstream_request_id
from freight.domain.lanes import LaneLimits, LaneOutcome, LaneRefused, OutcomeKind, UpstreamProgress
from freight.domain.requests import Result
from freight.domain.retry import is_transient_status
from freight.domain.secrets import Secret
from freight.ports import ModelInfo
from freight.wire import jsonx

OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
MESSAGES = "/v1/messages"
log = logging.getLogger("freight.lanes")

#: Statuses of a create/upload that will never succeed as they are.
REFUSED = frozenset({400, 401, 403, 404, 413, 415, 422})
#: Statuses of a poll or a download that asking again will not change (the batch or file is not there for
#: this key); anything else (connection, 5xx, 429) is asked again.
GONE = frozenset({401, 403, 404, 410})
#: How far back from a lost create to look for the batch it made.
CREATE_SKEW_S = 30.0


class UpstreamError(Exception):
    """An upstream call failed in a way worth trying again (connection, 5xx, 429)."""


def _check(response: httpx.Response, what: str, final: frozenset[int] = frozenset(),
           secret: Secret | None = None) -> None:
    """Nothing for a 2xx; ``LaneRefused`` for a status in ``final`` (asking again cannot help), else
    ``UpstreamError`` (the runner asks again)."""
    if response.is_success:
        return
    text = (secret.scrub(response.text) if secret is not None else response.text)[:500]
    if response.status_code in final:
        raise LaneRefused(f"the upstream refused {what}: HTTP {response.status_code}: {text}")
    raise UpstreamError(f"{what}: HTTP {response.status_code}: {text}")


def _parsed(line: bytes, model_id: str) -> Any:
    """One line of a results file; None (the request then counts as not run, and gets another round) for
    one that is not JSON, rather than losing every other answer of the file."""
    try:
        return jsonx.loads(line)
    except jsonx.JSONDecodeError:
        log.warning("an upstream results line is not JSON; its request counts as not run",
                    extra={"event": "lane_bad_line", "model": model_id,
                           "line_start": line[:80].decode(errors="replace")})
        return None


def _tokens(usage: Mapping[str, Any], *keys: str) -> int:
    """The first of ``keys`` that is a count (anything else, such as a string, counts 0)."""
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def _rfc3339(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Lane:
    kind = ""
    default_max_requests = 50_000
    default_max_bytes = 200 * 1024 * 1024

    def __init__(self, model_id: str, *, base_url: str, api_key_env: str | None = None,
                 upstream_model: str | None = None, max_requests_per_batch: int | None = None,
                 max_bytes_per_batch: int | None = None, poll_interval_s: float = 30.0,
                 max_poll_interval_s: float = 300.0, max_rounds: int = 3, cancel_timeout_s: float = 900.0,
                 timeout_s: float = 600.0, endpoints: Sequence[str] | None = None,
                 env: dict[str, str] | None = None):
        where = f'[models."{model_id}"]'
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: base_url must be an http(s) URL, got {base_url!r}")
        if max_rounds < 1:
            raise ConfigError(f"{where}: max_rounds must be at least 1, got {max_rounds}")
        if poll_interval_s <= 0 or max_poll_interval_s < poll_interval_s:
            raise ConfigError(f"{where}: need 0 < poll_interval_s <= max_poll_interval_s, got poll_interval_s = "
                              f"{poll_interval_s} and max_poll_interval_s = {max_poll_interval_s}")
        served = self.served_endpoints()
        if endpoints is not None and (not endpoints or not set(endpoints) <= served):
            raise ConfigError(f"{where}: endpoints must be among {', '.join(sorted(served))}, got {list(endpoints)}")
        self.model_id = model_id
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._secret = Secret.from_env(api_key_env, os.environ if env is None else env, where)
        self.limits = LaneLimits(max_requests=max_requests_per_batch or self.default_max_requests,
                                 max_bytes=max_bytes_per_batch or self.default_max_bytes)
        self.poll_interval_s = float(poll_interval_s)
        self.max_poll_interval_s = float(max_poll_interval_s)
        self.max_rounds = int(max_rounds)
        self.cancel_timeout_s = float(cancel_timeout_s)
        self.timeout_s = float(timeout_s)
        self._endpoints = frozenset(endpoints) if endpoints else None
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def served_endpoints(cls) -> frozenset[str]:
        return frozenset(OPENAI_ENDPOINTS)

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(model={self.model_id!r}, base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {}

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                                             headers=self._headers())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise UpstreamError("the lane is not started")
        return self._client

    def _rename(self, body: bytes) -> bytes:
        if self.upstream_model is None:
            return body
        obj = jsonx.loads(body)
        if isinstance(obj, dict):
            obj["model"] = self.upstream_model
        return jsonx.dumps(obj)

    async def _get_json(self, url: str, what: str, final: frozenset[int] = frozenset(), **params: Any) -> Any:
        try:
            response = await self.http.get(url, params=params or None)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{what}: {type(exc).__name__}: {exc}") from exc
        _check(response, what, final, secret=self._secret)
        return response.json()

    async def _lines_of(self, url: str, what: str) -> AsyncIterator[bytes]:
        try:
            async with self.http.stream("GET", url) as response:
                if not response.is_success:
                    await response.aread()
                _check(response, what, GONE, secret=self._secret)
                buffer = b""
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
                if buffer.strip():
                    yield buffer
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{what}: {type(exc).__name__}: {exc}") from exc


# ---- OpenAI-compatible Files + Batches --------------------------------------------------------

class OpenAIBatchLane(_Lane):
    kind = "openai-batch"

    def __init__(self, model_id: str, *, completion_window: str = "24h", **options: Any):
        super().__init__(model_id, **options)
        try:  # (checked here, not by the upstream refusing every batch after its upload)
            parse_duration_s(completion_window)
        except (TypeError, ValueError):
            raise ConfigError(f'[models."{model_id}"]: completion_window must be a duration such as "24h", got '
                              f"{completion_window!r}") from None
        self.completion_window = completion_window

    def _headers(self) -> dict[str, str]:
        key = self._secret.reveal()
        return {"authorization": f"Bearer {key}"} if key else {}

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=self._endpoints or self.served_endpoints(),
                          owned_by=f"{self.kind}:{self.base_url}")]

    @staticmethod
    def filename(sub_id: str) -> str:
        return f"freight-{sub_id}.jsonl"

    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            for line in lines:
                if self.upstream_model is not None and line.strip():
                    obj = jsonx.loads(line)
                    obj["body"] = jsonx.loads(self._rename(jsonx.dumps(obj["body"])))
                    line = jsonx.dumps(obj) + b"\n"
                spool.write(line)
            spool.seek(0)
            try:
                response = await self.http.post(self.base_url + "/files", data={"purpose": "batch"},
                                                files={"file": (self.filename(sub_id), spool, "application/jsonl")})
            except httpx.HTTPError as exc:
                raise UpstreamError(f"upload: {type(exc).__name__}: {exc}") from exc
        _check(response, "the upload", final=REFUSED, secret=self._secret)
        file_id: str = response.json()["id"]
        return file_id

    async def find_upload(self, sub_id: str) -> str | None:
        name = self.filename(sub_id)
        after: str | None = None
        for _ in range(20):  # newest first; a lost upload is among the most recent files
            params: dict[str, Any] = {"purpose": "batch", "limit": 1000, "order": "desc"}
            if after:
                params["after"] = after
            page = await self._get_json(self.base_url + "/files", "listing files", **params)
            for f in page.get("data", []):
                if f.get("filename") == name:
                    found: str = f["id"]
                    return found
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        assert upload_id is not None
        body = {"input_file_id": upload_id, "endpoint": endpoint, "completion_window": self.completion_window,
                "metadata": {"freight_sub": sub_id}}
        try:
            response = await self.http.post(self.base_url + "/batches", json=body,
                                            headers={"idempotency-key": sub_id})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"create: {type(exc).__name__}: {exc}") from exc
        _check(response, "the batch", final=REFUSED, secret=self._secret)
        batch_id: str = response.json()["id"]
        return batch_id

    async def find_created(self, sub_id: str, upload_id: str | None, sent_at: float, requests: int) -> str | None:
        after: str | None = None
        for _ in range(50):
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = await self._get_json(self.base_url + "/batches", "listing batches", **params)
            data = page.get("data", [])
            for b in data:
                if b.get("input_file_id") == upload_id or (b.get("metadata") or {}).get("freight_sub") == sub_id:
                    found: str = b["id"]
                    return found
            if not page.get("has_more") or not data or (data[-1].get("created_at") or 0) < sent_at - CREATE_SKEW_S:
                return None
            after = data[-1]["id"]
        return None

    async def poll(self, upstream_id: str) -> UpstreamProgress:
        b = await self._get_json(f"{self.base_url}/batches/{upstream_id}", "polling", GONE)
        status = str(b.get("status"))
        counts = b.get("request_counts") or {}
        failure = None
        if status == "failed":
            errors = (b.get("errors") or {}).get("data") or []
            failure = "; ".join(str(e.get("message")) for e in errors[:5]) or "the upstream batch failed"
        return UpstreamProgress(status=status, ended=status in ("completed", "expired", "cancelled", "failed"),
                                completed=int(counts.get("completed") or 0), failed=int(counts.get("failed") or 0),
                                failure=failure)

    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        b = await self._get_json(f"{self.base_url}/batches/{upstream_id}", "polling", GONE)
        out: list[LaneOutcome] = []
        for file_id in (b.get("output_file_id"), b.get("error_file_id")):
            if not file_id:
                continue
            async for line in self._lines_of(f"{self.base_url}/files/{file_id}/content", "downloading results"):
                outcome = self.outcome(_parsed(line, self.model_id))
                if outcome is not None:
                    out.append(outcome)
        return out

    @staticmethod
    def outcome(line: Any) -> LaneOutcome | None:
        """One output/error-file line (shared/reference/batch-apis.md §3.3) as a LaneOutcome."""
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return None
        key = line["custom_id"]
        response, error = line.get("response"), line.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            status = response["status_code"]
            body = response.get("body")
            usage = body.get("usage") if isinstance(body, dict) else None
            usage = usage if isinstance(usage, dict) else {}
            result = Result(status_code=status, body=jsonx.dumps(body),
                            request_id=upstream_request_id(response.get("request_id")),
                            input_tokens=_tokens(usage, "prompt_tokens", "input_tokens"),
                            output_tokens=_tokens(usage, "completion_tokens", "output_tokens"))
            kind = OutcomeKind.RETRY if is_transient_status(status) else OutcomeKind.FINAL
            return LaneOutcome(key, kind, result)
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "upstream_error")
        if code in ("batch_expired", "batch_cancelled"):
            return LaneOutcome(key, OutcomeKind.NOT_RUN)
        result = Result.never_ran(code, str(error.get("message") or "The upstream gave no response."))
        return LaneOutcome(key, OutcomeKind.RETRY, result)

    async def cancel(self, upstream_id: str) -> None:
        try:
            response = await self.http.post(f"{self.base_url}/batches/{upstream_id}/cancel")
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cancel: {type(exc).__name__}: {exc}") from exc
        if response.status_code not in (400, 409):  # already finished: nothing to cancel
            _check(response, "cancel", GONE, secret=self._secret)  # (gone: settled as a poll settles it)


# ---- Anthropic Message Batches ----------------------------------------------------------------

#: Anthropic error types: retried as they are, or final (invalid_request_error: the body must change).
RETRYABLE_TYPES = {"rate_limit_error": 429, "overloaded_error": 529, "api_error": 500, "timeout_error": 504}
FINAL_TYPES = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
               "permission_error": 403, "not_found_error": 404, "request_too_large": 413}


class AnthropicBatchLane(_Lane):
    kind = "anthropic-batch"
    default_max_requests = 100_000
    default_max_bytes = 256 * 1024 * 1024

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": "2023-06-01"}
        key = self._secret.reveal()
        if key:
            headers["x-api-key"] = key
        return headers

    @classmethod
    def served_endpoints(cls) -> frozenset[str]:
        return frozenset({MESSAGES})

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=self._endpoints or self.served_endpoints(),
                          owned_by=f"{self.kind}:{self.base_url}")]

    async def upload(self, sub_id: str, endpoint: str, lines: IO[bytes]) -> str | None:
        return None  # the requests travel in the create

    async def find_upload(self, sub_id: str) -> str | None:
        return None

    def _body(self, lines: IO[bytes]) -> bytes:
        parts: list[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            obj = jsonx.loads(line)
            parts.append(b'{"custom_id":' + jsonx.dumps(obj["custom_id"]) + b',"params":'
                         + self._rename(jsonx.dumps(obj["body"])) + b"}")
        return b'{"requests":[' + b",".join(parts) + b"]}"

    async def create(self, sub_id: str, endpoint: str, upload_id: str | None, lines: IO[bytes]) -> str:
        body = self._body(lines)
        try:
            response = await self.http.post(self.base_url + "/v1/messages/batches", content=body,
                                            headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"create: {type(exc).__name__}: {exc}") from exc
        _check(response, "the batch", final=REFUSED, secret=self._secret)
        batch_id: str = response.json()["id"]
        return batch_id

    async def find_created(self, sub_id: str, upload_id: str | None, sent_at: float, requests: int) -> str | None:
        page = await self._get_json(self.base_url + "/v1/messages/batches", "listing batches", limit=100)
        for b in page.get("data", []):
            created = _rfc3339(b.get("created_at"))
            total = sum(int(v or 0) for v in (b.get("request_counts") or {}).values())
            if created is not None and created >= int(sent_at) - CREATE_SKEW_S and total == requests:
                found: str = b["id"]
                return found
        return None

    async def poll(self, upstream_id: str) -> UpstreamProgress:
        b = await self._get_json(f"{self.base_url}/v1/messages/batches/{upstream_id}", "polling", GONE)
        counts = b.get("request_counts") or {}
        status = str(b.get("processing_status"))
        failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
        return UpstreamProgress(status=status, ended=status == "ended",
                                completed=int(counts.get("succeeded") or 0), failed=failed)

    async def outcomes(self, upstream_id: str) -> list[LaneOutcome]:
        b = await self._get_json(f"{self.base_url}/v1/messages/batches/{upstream_id}", "polling", GONE)
        url = b.get("results_url") or f"/v1/messages/batches/{upstream_id}/results"
        if url.startswith("/"):
            url = self.base_url + url
        out: list[LaneOutcome] = []
        async for line in self._lines_of(url, "downloading results"):
            outcome = self.outcome(_parsed(line, self.model_id))
            if outcome is not None:
                out.append(outcome)
        return out

    @staticmethod
    def outcome(line: Any) -> LaneOutcome | None:
        """One results line (shared/reference/batch-apis.md §4.3) as a LaneOutcome."""
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return None
        key, result = line["custom_id"], line.get("result")
        kind = result.get("type") if isinstance(result, dict) else None
        if kind == "succeeded":
            message = result.get("message")  # type: ignore[union-attr]
            usage = message.get("usage") if isinstance(message, dict) else None
            usage = usage if isinstance(usage, dict) else {}
            return LaneOutcome(key, OutcomeKind.FINAL, Result(
                status_code=200, body=jsonx.dumps(message), request_id=new_request_id(),
                input_tokens=_tokens(usage, "input_tokens"), output_tokens=_tokens(usage, "output_tokens")))
        if kind in ("canceled", "expired"):
            return LaneOutcome(key, OutcomeKind.NOT_RUN)
        envelope = result.get("error") if isinstance(result, dict) else None
        envelope = envelope if isinstance(envelope, dict) else {}
        error: dict[str, Any] = envelope["error"] if isinstance(envelope.get("error"), dict) else {}
        error_type = str(error.get("type") or "api_error")
        body = {"type": "error", "error": {"type": error_type, "message": str(error.get("message") or "")}}
        request_id = upstream_request_id(envelope.get("request_id"))
        if error_type in RETRYABLE_TYPES:
            return LaneOutcome(key, OutcomeKind.RETRY, Result(RETRYABLE_TYPES[error_type], jsonx.dumps(body),
                                                              request_id))
        return LaneOutcome(key, OutcomeKind.FINAL, Result(FINAL_TYPES.get(error_type, 400), jsonx.dumps(body),
                                                          request_id))

    async def cancel(self, upstream_id: str) -> None:
        try:
            response = await self.http.post(f"{self.base_url}/v1/messages/batches/{upstream_id}/cancel")
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cancel: {type(exc).__name__}: {exc}") from exc
        if response.status_code not in (400, 409):  # ended already: nothing to cancel
            _check(response, "cancel", GONE, secret=self._secret)  # (gone: settled as a poll settles it)
