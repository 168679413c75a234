"""Anthropic Messages ⇄ OpenAI chat completions, for models that only speak the latter.

``messages_to_chat`` turns Messages create params into a chat completions body, or raises
``Untranslatable`` (the request then fails with ``invalid_request_error``; nothing is dropped
silently). ``chat_to_message`` turns the chat completion back into a Message. docs/anthropic.md
lists what translates.

Translated: ``model``, ``max_tokens`` (required), ``system`` (a string or text blocks),
``messages`` whose content is a string or text, ``tool_use`` and ``tool_result`` blocks,
``stop_sequences`` → ``stop``, ``temperature``, ``top_p``, ``top_k`` (sent as the ``top_k`` extension
most OpenAI-compatible servers accept), ``metadata.user_id`` → ``user``, custom ``tools`` →
function ``tools``, ``tool_choice`` (``auto``/``any``/``tool``/``none``, ``disable_parallel_tool_use``
→ ``parallel_tool_calls: false``). ``cache_control`` on blocks and tools is accepted and ignored (a
caching hint), as are ``service_tier``, empty ``tools`` and ``thinking: {"type": "disabled"}``.

Tool calls: an assistant turn's ``tool_use`` blocks become its ``tool_calls`` (``input`` as the JSON
``arguments``), a user turn's ``tool_result`` blocks become ``tool`` messages (before the turn's text,
which becomes a user message); an answer's ``tool_calls`` become ``tool_use`` blocks (after its text)
with ``stop_reason: "tool_use"``.

Not translated (``invalid_request_error``): ``stream``, server tools, images (also inside tool results),
documents, thinking, citations, search results, a final assistant message (prefill), and every other
parameter.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from freight.domain.message_batches import MESSAGE_ID_PREFIX

#: Params that translate (others are refused unless null).
TRANSLATED_PARAMS = frozenset(
    {"model", "max_tokens", "system", "messages", "stop_sequences", "temperature", "top_p", "top_k", "metadata",
     "tools", "tool_choice"}
)
#: Params accepted and ignored: they do not change what the model generates.
IGNORED_PARAMS = frozenset({"service_tier"})
#: Keys of a text block that translate (``cache_control`` is a hint and is ignored).
TEXT_BLOCK_KEYS = frozenset({"type", "text", "cache_control"})
TOOL_USE_KEYS = frozenset({"type", "id", "name", "input", "cache_control"})
TOOL_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"})
TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control"})
TOOL_USE_ID_PREFIX = "toolu_"

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


def _block_keys(block: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(k for k, v in block.items() if k not in allowed and v is not None)
    if extra:
        raise Untranslatable(f"{where}.{extra[0]}: not supported when the model runs through chat "
                             "completions (see docs/anthropic.md).")


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    _block_keys(block, TOOL_RESULT_KEYS, where)
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise Untranslatable(f"{where}.tool_use_id: Field required." if tool_use_id is None
                             else f"{where}.tool_use_id: Input should be a valid string.")
    content = block.get("content")
    text = "" if content is None else _content(content, f"{where}.content")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise Untranslatable(f"{where}.is_error: Input should be a valid boolean.")
    if is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    _block_keys(block, TOOL_USE_KEYS, where)
    for key in ("id", "name"):
        if not isinstance(block.get(key), str) or not block[key]:
            raise Untranslatable(f"{where}.{key}: Field required." if block.get(key) is None
                                 else f"{where}.{key}: Input should be a valid string.")
    tool_input = block.get("input")
    if not isinstance(tool_input, dict):
        raise Untranslatable(f"{where}.input: Input should be a valid dictionary.")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(tool_input, ensure_ascii=False)}}


def _turns(role: str, content: Any, where: str) -> list[dict[str, Any]]:
    """The chat messages of one Messages turn: tool results first (as ``tool`` messages), then the text
    (and, for the assistant, its ``tool_use`` blocks as ``tool_calls``)."""
    if not isinstance(content, list):
        return [{"role": role, "content": _content(content, where)}]
    texts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and role == "user":
            assert isinstance(block, dict)
            results.append(_tool_result(block, f"{where}.{i}"))
        elif kind == "tool_use" and role == "assistant":
            assert isinstance(block, dict)
            calls.append(_tool_use(block, f"{where}.{i}"))
        elif kind in ("tool_result", "tool_use"):
            raise Untranslatable(f"{where}.{i}.type: {kind!r} blocks belong in "
                                 f"{'user' if kind == 'tool_result' else 'assistant'} messages.")
        else:
            texts.append(block)
    turns = list(results)
    text = _text_blocks(texts, where) if texts else ""
    if calls:
        turns.append({"role": role, "content": text or None, "tool_calls": calls})
    elif texts or not results:
        turns.append({"role": role, "content": text})
    return turns


def _tools(params: dict[str, Any]) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of the chat body (empty without tools)."""
    tools = params.get("tools")
    choice = params.get("tool_choice")
    if choice is not None and not isinstance(choice, dict):
        raise Untranslatable("tool_choice: Input should be a valid dictionary.")
    kind = choice.get("type") if choice is not None else None
    if not tools:
        if tools is not None and not isinstance(tools, list):
            raise Untranslatable("tools: Input should be a valid list.")
        if kind not in (None, "none"):
            raise Untranslatable("tool_choice: only allowed when tools are provided.")
        return {}
    if not isinstance(tools, list):
        raise Untranslatable("tools: Input should be a valid list.")
    functions = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise Untranslatable(f"{where}: Input should be a valid dictionary.")
        if tool.get("type") not in (None, "custom"):
            raise Untranslatable(f"{where}.type: server tools ({tool.get('type')!r}) cannot be translated to chat "
                                 "completions; only custom tools can (see docs/anthropic.md).")
        _block_keys(tool, TOOL_KEYS, where)
        name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
        if not isinstance(name, str) or not name:
            raise Untranslatable(f"{where}.name: Field required." if name is None
                                 else f"{where}.name: Input should be a valid string.")
        if not isinstance(schema, dict):
            raise Untranslatable(f"{where}.input_schema: Field required." if schema is None
                                 else f"{where}.input_schema: Input should be a valid dictionary.")
        if description is not None and not isinstance(description, str):
            raise Untranslatable(f"{where}.description: Input should be a valid string.")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if description:
            fn["description"] = description
        functions.append({"type": "function", "function": fn})
    out: dict[str, Any] = {"tools": functions}
    if choice is None:
        return out
    extra = sorted(k for k, v in choice.items() if k not in ("type", "name", "disable_parallel_tool_use")
                   and v is not None)
    if extra:
        raise Untranslatable(f"tool_choice.{extra[0]}: Extra inputs are not permitted.")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise Untranslatable("tool_choice.name: Field required.")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise Untranslatable("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'.")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise Untranslatable("tool_choice.disable_parallel_tool_use: Input should be a valid boolean.")
    if disable and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def messages_to_chat(params: dict[str, Any]) -> dict[str, Any]:
    """A chat completions body for Messages create ``params``; ``Untranslatable`` if there is none."""
    for key, value in params.items():
        if key in TRANSLATED_PARAMS or key in IGNORED_PARAMS or value is None:
            continue
        if key == "stream":
            if value is False:
                continue
            raise Untranslatable("stream: streaming is not supported by this server.")
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
        out.extend(_turns(role, message["content"], f"messages.{i}.content"))
    if out[-1]["role"] == "assistant":
        raise Untranslatable(
            f"messages.{len(messages) - 1}: a final assistant message (prefill) cannot be translated to chat "
            "completions (see docs/anthropic.md).")

    body: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    body.update(_tools(params))
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
    tool_calls = message.get("tool_calls")
    if tool_calls:
        content.extend(_tool_use_blocks(tool_calls))
        stop_reason = "tool_use"
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


def tool_use_id(call_id: str) -> str:
    """An Anthropic-style id (``toolu_...``) for a chat tool call's id."""
    if call_id.startswith(TOOL_USE_ID_PREFIX):
        return call_id
    return TOOL_USE_ID_PREFIX + call_id.removeprefix("call_")


def _tool_use_blocks(tool_calls: Any) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise BadChatResponse("the chat completion's tool_calls is not a list")
    blocks = []
    for call in tool_calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadChatResponse("a tool call of the chat completion is not a function call")
        arguments = fn.get("arguments")
        try:
            tool_input = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
        except ValueError:
            raise BadChatResponse(f"the arguments of the tool call {fn['name']!r} are not JSON") from None
        if not isinstance(tool_input, dict):
            raise BadChatResponse(f"the arguments of the tool call {fn['name']!r} are not a JSON object")
        call_id = call.get("id")
        blocks.append({"type": "tool_use",
                       "id": tool_use_id(call_id) if isinstance(call_id, str) and call_id else
                       TOOL_USE_ID_PREFIX + secrets.token_hex(12),
                       "name": fn["name"], "input": tool_input})
    return blocks


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
