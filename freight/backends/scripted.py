"""A backend whose behaviour is written in the request itself: for tests, demos and chaos runs.

Model ``freight-scripted`` on every endpoint. The body may carry ``"script"``:

- ``{"sleep_s": 0.5}``: take that long;
- ``{"fail_times": 2, "status": 503}``: answer ``status`` (or a ``Failure`` when status is 0) on
  the first ``fail_times`` attempts of this request (counted per custom key ``"key"`` in this
  process), then succeed;
- ``{"status": 400}``: always answer that status with an OpenAI error body.

The success body echoes the request body back, so tests can check routing. On
``/v1/chat/completions`` it is also shaped like a chat completion (``id``, ``model``, ``choices``,
``usage``), so that translating callers (the Messages adapter) get a real answer: the reply is
``script["reply"]`` or ``"echo: <last message>"``; a word is a token, so ``max_tokens`` cuts the
reply (``finish_reason: "length"``), and a ``stop`` string in it ends the reply there
(``finish_reason: "stop"`` and, as vLLM does, ``stop_reason`` naming the string).

A chat request can also carry its script in its last message: content starting with
``#script `` followed by the script's JSON (for callers that cannot add a ``script`` key, such
as Anthropic Messages params).

With ``slots=N`` at most N requests run at once and the others wait for a slot, as in a model
server; a waiting request whose call is withdrawn (``freight.ports.Withdrawal``) ends at once
without running.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from freight.domain import ids
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo, Withdrawn, current_withdrawal
from freight.wire import jsonx

SCRIPTED_MODEL = "freight-scripted"
CHAT = "/v1/chat/completions"
ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})


class ScriptedBackend:
    def __init__(self, model_id: str = SCRIPTED_MODEL, *, chunk_size: int = 16, max_concurrency: int = 4,
                 slots: int | None = None):
        self.model_id = model_id
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.calls: Counter[str] = Counter()
        self.executed = 0
        self.withdrawn = 0
        self._slots = asyncio.Semaphore(slots) if slots is not None else None

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(id=self.model_id, endpoints=ENDPOINTS)]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if self._slots is None:
            # A request that neither sleeps nor waits for a slot is answered inline: a task each (what
            # gather makes of coroutines) cost more than the answer itself.
            texts = [_last_text(body) for body in bodies]
            scripts = [_script(body, text) for body, text in zip(bodies, texts, strict=True)]
            if not any(script.get("sleep_s") for script in scripts):
                self.executed += len(bodies)
                request_ids = ids.new_request_ids(len(bodies))  # one read of the random source per chunk
                return [self._answer(endpoint, body, script, rid, text)
                        for body, script, rid, text in zip(bodies, scripts, request_ids, texts, strict=True)]
        return list(await asyncio.gather(*(self._slot(endpoint, body) for body in bodies)))

    async def _slot(self, endpoint: str, body: dict[str, Any]) -> Result | Failure:
        if self._slots is None:
            return await self._one(endpoint, body)
        withdrawal = current_withdrawal.get()
        try:
            await (withdrawal.before(self._slots.acquire()) if withdrawal else self._slots.acquire())
        except Withdrawn:
            assert withdrawal is not None
            self.withdrawn += 1
            return withdrawal.failure()
        try:
            return await self._one(endpoint, body)
        finally:
            self._slots.release()

    async def _one(self, endpoint: str, body: dict[str, Any]) -> Result | Failure:
        script = _script(body)
        self.executed += 1
        if script.get("sleep_s"):
            await asyncio.sleep(float(script["sleep_s"]))
        return self._answer(endpoint, body, script)

    def _answer(self, endpoint: str, body: dict[str, Any], script: dict[str, Any],
                request_id: str | None = None, text: str | None = None) -> Result | Failure:
        request_id = request_id or ids.new_request_id()
        key = str(script.get("key", "")) if script else ""
        attempt = self.calls[key] = self.calls[key] + 1
        status = 200
        if script:  # (the usual request has none: no lookups for it)
            status = int(script.get("status", 200))
            fail_times = script.get("fail_times")
            if fail_times is not None and attempt > int(fail_times):
                status = 200
        if status == 0:
            return Failure("connection_error", "scripted connection failure")
        if status >= 400:
            error = {"error": {"message": f"scripted failure {status}", "type": "invalid_request_error"
                               if status < 500 else "server_error", "param": None, "code": None}}
            return Result(status_code=status, body=jsonx.dumps(error), request_id=request_id)
        echo = jsonx.dumps(body)  # written once: measured for the token count and placed in the answer as it is
        response: dict[str, Any] = {"object": "scripted", "endpoint": endpoint, "echo": jsonx.encoded(echo),
                                    "attempt": attempt}
        input_tokens, output_tokens = len(echo) // 4, 1
        if endpoint == CHAT:
            output_tokens = _chat_completion(response, body, script, input_tokens, "chatcmpl-" + request_id[4:20],
                                             _last_text(body) if text is None else text)
        return Result(status_code=200, body=jsonx.dumps(response), request_id=request_id,
                      input_tokens=input_tokens, output_tokens=output_tokens)


SCRIPT_PREFIX = "#script "


def _script(body: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    script: dict[str, Any] = body.get("script") or _message_script(body, text) or {}
    return script


def _last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return ""
    content = messages[-1].get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _message_script(body: dict[str, Any], text: str | None = None) -> dict[str, Any] | None:
    if text is None:
        text = _last_text(body)
    if not text.startswith(SCRIPT_PREFIX):
        return None
    try:
        script = jsonx.loads(text[len(SCRIPT_PREFIX):])
    except jsonx.JSONDecodeError:
        return None
    return script if isinstance(script, dict) else None


def _chat_completion(response: dict[str, Any], body: dict[str, Any], script: dict[str, Any], prompt: int,
                     completion_id: str, text: str) -> int:
    """Add a chat completion's fields to ``response``; the number of completion tokens (words); ``text`` is the
    last message's."""
    reply = str(script.get("reply", f"echo: {text}"))
    finish, matched = str(script.get("finish_reason", "stop")), None
    stops = body.get("stop")
    for stop in [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []:
        if isinstance(stop, str) and stop and stop in reply:
            reply, finish, matched = reply[: reply.index(stop)], "stop", stop
    words = reply.split(" ") if reply else []
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(words) > limit:
        words, finish, matched = words[:limit], "length", None
        reply = " ".join(words)
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": reply},
                              "finish_reason": finish, "logprobs": None}
    if matched is not None:
        choice["stop_reason"] = matched
    response.update({
        "id": completion_id,
        "created": 0,
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)},
    })
    return len(words)
