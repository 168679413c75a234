"""A backend whose behaviour is written in the request itself: for tests, demos and chaos runs.

Model ``freight-scripted`` on every endpoint. The body may carry ``"script"``:

- ``{"sleep_s": 0.5}``: take that long;
- ``{"fail_times": 2, "status": 503}``: answer ``status`` (or a ``Failure`` when status is 0) on
  the first ``fail_times`` attempts of this request (counted per custom key ``"key"`` in this
  process), then succeed;
- ``{"status": 400}``: always answer that status with an OpenAI error body.

The success body echoes the request body back, so tests can check routing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from freight.domain import ids
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo
from freight.wire import jsonx

SCRIPTED_MODEL = "freight-scripted"
ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})


class ScriptedBackend:
    def __init__(self, model_id: str = SCRIPTED_MODEL, *, chunk_size: int = 16, max_concurrency: int = 4):
        self.model_id = model_id
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.calls: Counter[str] = Counter()
        self.executed = 0

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=ENDPOINTS)]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        return list(await asyncio.gather(*(self._one(endpoint, body) for body in bodies)))

    async def _one(self, endpoint: str, body: dict[str, Any]) -> Result | Failure:
        script = body.get("script") or {}
        self.executed += 1
        if script.get("sleep_s"):
            await asyncio.sleep(float(script["sleep_s"]))
        key = str(script.get("key", ""))
        attempt = self.calls[key] = self.calls[key] + 1
        status = int(script.get("status", 200))
        fail_times = script.get("fail_times")
        if fail_times is not None and attempt > int(fail_times):
            status = 200
        if status == 0:
            return Failure("connection_error", "scripted connection failure")
        if status >= 400:
            error = {"error": {"message": f"scripted failure {status}", "type": "invalid_request_error"
                               if status < 500 else "server_error", "param": None, "code": None}}
            return Result(status_code=status, body=jsonx.dumps(error), request_id=ids.new_request_id())
        response = {"object": "scripted", "endpoint": endpoint, "echo": body, "attempt": attempt}
        return Result(status_code=200, body=jsonx.dumps(response), request_id=ids.new_request_id(),
                      input_tokens=len(jsonx.dumps(body)) // 4, output_tokens=1)
