"""Anthropic Messages ⇄ OpenAI chat completions, for models that only speak the latter.

``messages_to_chat`` turns Messages create params into a chat completions body, or raises
``Untranslatable`` (the request then fails with ``invalid_request_error``; nothing is dropped
silently). ``chat_to_message`` turns the chat completion back into a Message. docs/anthropic.md
lists what translates.

Translated: ``model``, ``max_tokens`` (required), ``system`` (a string or text blocks),
``messages`` whose content is a string or text blocks, ``stop_sequences`` → ``stop``,
``temperature``, ``top_p``, ``top_k`` (sent as the ``top_k`` extension most OpenAI-compatible
servers accept), ``metadata.user_id`` → ``user``. ``cache_control`` on text blocks is accepted and
ignored (a caching hint), as are ``service_tier``, empty ``tools`` and ``thinking: {"type": "disabled"}``.

Not translated (``invalid_request_error``): ``stream``, tools and tool blocks, images, documents,
thinking, citations, search results, a final assistant message (prefill), and every other
parameter.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from freight.domain.message_batches import MESSAGE_ID_PREFIX

#: Params that translate (others are refused unless null).
TRANSLATED_PARAMS = frozenset(
    {"model", "max_tokens", "system", "messages", "stop_sequences", "temperature", "top_p", "top_k", "metadata"}
)
#: Params accepted and ignored: they do not change what the model generates.
IGNORED_PARAMS = frozenset({"service_tier"})
#: Keys of a text block that translate (``cache_control`` is a hint and is ignored).
TEXT_BLOCK_KEYS = frozenset({"type", "text", "cache_control"})

STOP_REASONS = {"length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use",
                "function_call": "tool_use"}


class Untranslatable(ValueError):
    """The request cannot be run through chat completions; ``str()`` says why, Anthropic-style."""


def new_message_id() -> str:
    return MESSAGE_ID_PREFIX + secrets.token_hex(12)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _number(params: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Untranslatable(f"{key}: Input should be a valid number, got {_type_name(value)}.")
    if not lo <= value <= hi:
        raise Untranslatable(f"{key}: Input should be between {lo:g} and {hi:g}, got {value}.")
    return float(value)


def _text_blocks(blocks: list[Any], where: str) -> str:
    texts: list[str] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise Untranslatable(f"{where}.{i}: Input should be a valid content block object.")
        kind = block.get("type")
        if kind != "text":
            raise Untranslatable(
                f"{where}.{i}.type: {kind!r} content blocks cannot be translated to chat completions; only 'text' "
                "blocks can (see docs/anthropic.md).")
        extra = sorted(k for k, v in block.items() if k not in TEXT_BLOCK_KEYS and v is not None)
        if extra:
            raise Untranslatable(f"{where}.{i}.{extra[0]}: not supported when the model runs through chat "
                                 "completions (see docs/anthropic.md).")
        text = block.get("text")
        if not isinstance(text, str):
            raise Untranslatable(f"{where}.{i}.text: Input should be a valid string.")
        texts.append(text)
    return "\n".join(texts)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _text_blocks(content, where)
    raise Untranslatable(f"{where}: Input should be a valid string or list of content blocks.")


def messages_to_chat(params: dict[str, Any]) -> dict[str, Any]:
    """A chat completions body for Messages create ``params``; ``Untranslatable`` if there is none."""
    for key, value in params.items():
        if key in TRANSLATED_PARAMS or key in IGNORED_PARAMS or value is None:
            continue
        if key == "stream":
            if value is False:
                continue
            raise Untranslatable("stream: streaming is not supported in a Message Batch.")
        if key in ("tools", "tool_choice") and not value:
            continue
        if key == "thinking" and isinstance(value, dict) and value.get("type") == "disabled":
            continue
        raise Untranslatable(f"{key}: not supported when the model runs through chat completions "
                             "(see docs/anthropic.md for what translates).")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise Untranslatable("model: Field required." if model is None else "model: Input should be a valid string.")
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        raise Untranslatable("max_tokens: Field required.")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise Untranslatable("max_tokens: Input should be an integer of at least 1.")

    out: list[dict[str, Any]] = []
    system = params.get("system")
    if system is not None:
        text = _content(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    messages = params.get("messages")
    if messages is None:
        raise Untranslatable("messages: Field required.")
    if not isinstance(messages, list):
        raise Untranslatable("messages: Input should be a valid list.")
    if not messages:
        raise Untranslatable("messages: List should have at least 1 item.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise Untranslatable(f"messages.{i}: Input should be a valid message object.")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Untranslatable(f"messages.{i}.role: Input should be 'user' or 'assistant'.")
        extra = sorted(k for k, v in message.items() if k not in ("role", "content") and v is not None)
        if extra:
            raise Untranslatable(f"messages.{i}.{extra[0]}: Extra inputs are not permitted.")
        if "content" not in message:
            raise Untranslatable(f"messages.{i}.content: Field required.")
        out.append({"role": role, "content": _content(message["content"], f"messages.{i}.content")})
    if out[-1]["role"] == "assistant":
        raise Untranslatable(
            f"messages.{len(messages) - 1}: a final assistant message (prefill) cannot be translated to chat "
            "completions (see docs/anthropic.md).")

    body: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    stops = params.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Untranslatable("stop_sequences: Input should be a valid list of strings.")
        if stops:
            body["stop"] = list(stops)
    temperature = _number(params, "temperature", 0.0, 1.0)
    if temperature is not None:
        body["temperature"] = temperature
    top_p = _number(params, "top_p", 0.0, 1.0)
    if top_p is not None:
        body["top_p"] = top_p
    top_k = params.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise Untranslatable("top_k: Input should be a non-negative integer.")
        body["top_k"] = top_k
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise Untranslatable("metadata: Input should be a valid object.")
        extra = sorted(k for k in metadata if k != "user_id")
        if extra:
            raise Untranslatable(f"metadata.{extra[0]}: Extra inputs are not permitted.")
        user_id = metadata.get("user_id")
        if user_id is not None:
            if not isinstance(user_id, str):
                raise Untranslatable("metadata.user_id: Input should be a valid string.")
            body["user"] = user_id
    return body


class BadChatResponse(ValueError):
    """The chat completion lacks what a Message needs (treated as no answer: retried)."""


def chat_to_message(chat: Any, model: str, stop_sequences: list[str] | None) -> dict[str, Any]:
    """The Message for a chat completion answer to a translated request for ``model``."""
    if not isinstance(chat, dict):
        raise BadChatResponse("the chat completion is not a JSON object")
    choices = chat.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadChatResponse("the chat completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadChatResponse("the chat completion's choice has no message")
    text = message.get("content")
    refusal = message.get("refusal")
    finish = choice.get("finish_reason")
    stop_reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    stop_sequence = None
    # Which stop sequence ended the text, when the server says so (vLLM's choices[].stop_reason;
    # freight's scripted backend); plain OpenAI does not, and then it reads as end_turn.
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        stop_reason, stop_sequence = "stop_sequence", matched
    content: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
        stop_reason = "refusal"
    usage = chat.get("usage") if isinstance(chat.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": _int(usage.get("prompt_tokens")),
            "output_tokens": _int(usage.get("completion_tokens")),
        },
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def chat_error_to_anthropic(status: int, body: Any, error_type: str) -> dict[str, Any]:
    """An OpenAI error body (``{"error": {"message", ...}}``) as Anthropic's error body."""
    message = f"The model answered HTTP {status}."
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
    return {"type": "error", "error": {"type": error_type, "message": message}}
