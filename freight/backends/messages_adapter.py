"""The Messages API on chat models: a wrapper that makes any chat backend serve ``/v1/messages``.

``build_backends`` wraps every configured backend in a ``MessagesAdapter``. For each model whose
backend serves ``/v1/chat/completions`` but not ``/v1/messages``, the adapter adds ``/v1/messages``
to its endpoints; a ``/v1/messages`` chunk for such a model is translated request by request
(freight.wire.messages_chat), run on the inner backend as chat completions, and each answer is
turned back into a Message (or an Anthropic error body). Everything else goes through unchanged.

Outcomes, as the engine sees them:

- params that do not translate: a final 400 ``invalid_request_error`` (never sent to the model);
- a chat answer: 200 with the Message (``usage`` and the engine's token counts from the answer);
- an HTTP error from the model: the same status (so 429/5xx are still retried) with the error in
  Anthropic's envelope;
- no answer, or a 2xx that is not a chat completion: a ``Failure`` (retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from freight.domain import ids
from freight.domain.message_batches import MESSAGES_ENDPOINT
from freight.domain.requests import Failure, Result
from freight.ports import Backend, ModelInfo
from freight.wire import anthropic, jsonx
from freight.wire.messages_chat import (
    BadChatResponse,
    Untranslatable,
    chat_error_to_anthropic,
    chat_to_message,
    messages_to_chat,
)

CHAT = "/v1/chat/completions"


def _error(status: int, message: str) -> Result:
    body = anthropic.error_envelope(anthropic.error_type_for(status), message, None)
    del body["request_id"]
    return Result(status_code=status, body=jsonx.dumps(body), request_id=ids.new_request_id())


class MessagesAdapter:
    """A ``Backend`` that adds ``/v1/messages`` (by translation) to the chat models of ``inner``."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.chunk_size = inner.chunk_size
        self.max_concurrency = inner.max_concurrency
        self._translated: set[str] | None = None

    # Anything else (counters, stats) is the inner backend's.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def models(self) -> Sequence[ModelInfo]:
        out: list[ModelInfo] = []
        translated: set[str] = set()
        for info in self.inner.models():
            if CHAT in info.endpoints and MESSAGES_ENDPOINT not in info.endpoints:
                translated.add(info.id)
                info = ModelInfo(id=info.id, endpoints=info.endpoints | {MESSAGES_ENDPOINT}, owned_by=info.owned_by)
            out.append(info)
        self._translated = translated
        return out

    def translates(self, model: object) -> bool:
        if self._translated is None:
            self.models()
        assert self._translated is not None
        return isinstance(model, str) and model in self._translated

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if endpoint != MESSAGES_ENDPOINT or not any(self.translates(b.get("model")) for b in bodies):
            return await self.inner.execute(endpoint, bodies)
        results: list[Result | Failure | None] = [None] * len(bodies)
        chats: list[dict[str, Any]] = []
        where: list[int] = []
        for i, body in enumerate(bodies):
            if not self.translates(body.get("model")):
                results[i] = _error(404, f"model: {body.get('model')!r} is not served for /v1/messages here.")
                continue
            try:
                chats.append(messages_to_chat(body))
            except Untranslatable as exc:
                results[i] = _error(400, str(exc))
                continue
            where.append(i)
        if chats:
            answers = await self.inner.execute(CHAT, chats)
            if len(answers) != len(chats):
                raise RuntimeError(f"backend returned {len(answers)} results for {len(chats)} requests")
            for i, chat, answer in zip(where, chats, answers, strict=True):
                results[i] = self._message_result(bodies[i], chat, answer)
        return [r for r in results if r is not None]

    @staticmethod
    def _message_result(params: dict[str, Any], chat: dict[str, Any], answer: Result | Failure) -> Result | Failure:
        if isinstance(answer, Failure):
            return answer
        status = answer.status_code or 500
        try:
            body = jsonx.loads(answer.body) if answer.body else None
        except jsonx.JSONDecodeError:
            body = None
        if 200 <= status < 300:
            try:
                message = chat_to_message(body, str(params["model"]), chat.get("stop"))
            except BadChatResponse as exc:
                return Failure("bad_response", f"the model's answer could not be read as a chat completion: {exc}")
            return Result(status_code=200, body=jsonx.dumps(message), request_id=answer.request_id,
                          input_tokens=answer.input_tokens, output_tokens=answer.output_tokens)
        error = chat_error_to_anthropic(status, body, anthropic.error_type_for(status))
        return Result(status_code=status, body=jsonx.dumps(error), request_id=answer.request_id,
                      input_tokens=answer.input_tokens, output_tokens=answer.output_tokens)
