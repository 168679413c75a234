"""OpenAI chat messages (with tools, tool calls and tool results) as the plain turns a chat template renders.

A local model's chat template takes ``{"role", "content"}`` turns of text. ``chat_messages`` validates an
OpenAI ``messages`` array and flattens it into such turns:

- ``system`` / ``developer`` / ``user`` / ``assistant`` with string content or text parts, as they are;
- when the request has tools (and ``tool_choice`` is not ``none``), a description of the tools and of the
  call format is appended to the first system turn, or becomes one (``tools_system_text``);
- an assistant turn with ``tool_calls``: its text, then the calls written the way the model is asked to
  write them, ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``;
- ``tool`` turns (results): each must answer a call of the assistant turn just before; consecutive results
  become one user turn of ``<tool_response>{"name": ..., "content": ...}</tool_response>`` blocks (the
  Hermes/Qwen ChatML convention; SmolLM2's template knows no ``tool`` role).

The reasons for this format are in docs/chat-model.md ("Function calling").
"""

from __future__ import annotations

import json
from typing import Any

from freight.wire.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolsError, ToolSpec

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

_PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you may need to make one or more function/tool calls to achieve the purpose."
)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tools_system_text(spec: ToolSpec) -> str:
    """What the model is told about the tools and how to call them."""
    described = []
    for t in spec.tools:
        d: dict[str, Any] = {"name": t.name}
        if t.description:
            d["description"] = t.description
        d["parameters"] = t.parameters
        described.append(_dump(d))
    lines = [_PREAMBLE, "", "You have access to the following tools:", "<tools>", *described, "</tools>", ""]
    if spec.forced is not None:
        lines.append(f"You must call the function {spec.forced!r} now.")
    elif spec.choice == "required":
        lines.append("You must call one or more of these functions now.")
    else:
        lines.append("If none of the functions fits, answer the user in plain text instead.")
    how_many = "one or more function calls" if spec.parallel else "exactly one function call"
    lines += [
        f"To call functions, answer with {how_many} in this format and nothing else:",
        f'{TOOL_CALL_OPEN}[{{"name": "func_name", "arguments": {{"argument1": "value1"}}}}]{TOOL_CALL_CLOSE}',
        "Results come back in <tool_response> blocks.",
    ]
    return "\n".join(lines)


def _text(content: Any, where: str, role: str) -> str:
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ToolsError(f"{where}.content[{j}]: only text parts are supported by the local model",
                                 f"{where}.content[{j}]", "unsupported_value")
            parts.append(part["text"])
        return "".join(parts)
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, str):
        raise ToolsError(f"{where}.content must be a string or an array of text parts", f"{where}.content", None)
    return content


def _calls(raw: Any, where: str) -> list[tuple[str, str, Any]]:
    """(id, name, arguments) of an assistant turn's ``tool_calls``."""
    if not isinstance(raw, list) or not raw:
        raise ToolsError(f"{where}.tool_calls must be a non-empty array", f"{where}.tool_calls", "invalid_type")
    out: list[tuple[str, str, Any]] = []
    for k, call in enumerate(raw):
        w = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ToolsError(f"{w} must be a function call object", w, "invalid_type")
        call_id, name, arguments = call.get("id"), fn.get("name"), fn.get("arguments")
        if not isinstance(call_id, str) or not call_id:
            raise ToolsError(f"{w}.id must be a non-empty string", f"{w}.id")
        if not isinstance(name, str) or not name:
            raise ToolsError(f"{w}.function.name must be a non-empty string", f"{w}.function.name")
        if not isinstance(arguments, str):
            raise ToolsError(f"{w}.function.arguments must be a string (JSON)", f"{w}.function.arguments",
                             "invalid_type")
        try:
            value: Any = json.loads(arguments)
        except ValueError:
            value = arguments  # shown to the model as written
        out.append((call_id, name, value))
    return out


def render_calls(calls: list[tuple[str, Any]]) -> str:
    """Calls ((name, arguments) pairs) as the model is asked to write them."""
    return TOOL_CALL_OPEN + _dump([{"name": n, "arguments": a} for n, a in calls]) + TOOL_CALL_CLOSE


def render_results(results: list[tuple[str, str]]) -> str:
    """Tool results ((name, content) pairs) as one user turn."""
    return "\n".join(f"<tool_response>\n{_dump({'name': n, 'content': c})}\n</tool_response>" for n, c in results)


def chat_messages(msgs: Any, spec: ToolSpec | None) -> list[dict[str, str]]:
    """Validated, flattened turns for the chat template; ``ToolsError`` names what is wrong."""
    if not isinstance(msgs, list) or not msgs:
        raise ToolsError("'messages' must be a non-empty array", "messages")
    out: list[dict[str, str]] = []
    open_calls: dict[str, str] = {}  # id -> name of the calls of the last assistant turn
    results: list[tuple[str, str]] = []
    answered: set[str] = set()

    def flush(at: int) -> None:
        missing = [call_id for call_id in open_calls if call_id not in answered]
        if missing:
            where = f"messages[{at}]" if at < len(msgs) else "messages"
            raise ToolsError(f"{where}: an assistant message with 'tool_calls' must be followed by tool messages "
                             f"answering each of its calls; {missing[0]!r} has no answer", where)
        if results:
            out.append({"role": "user", "content": render_results(results)})
            results.clear()

    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ToolsError(f"{where} must be an object", where, "invalid_type")
        role = m.get("role")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ToolsError(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise ToolsError(f"{where}: a 'tool' message must answer a tool call of the assistant message "
                                 f"just before it; no call has id {call_id!r}", f"{where}.tool_call_id")
            if call_id in answered:
                raise ToolsError(f"{where}: the tool call {call_id!r} is answered twice", f"{where}.tool_call_id")
            answered.add(call_id)
            results.append((open_calls[call_id], _text(m.get("content"), where, "tool")))
            continue
        flush(i)
        open_calls, answered = {}, set()
        if role not in ROLES:
            raise ToolsError(f"{where}.role {role!r} is not supported by the local model", f"{where}.role",
                             "unsupported_value")
        for key in ("function_call", "audio"):
            if m.get(key) is not None:
                raise ToolsError(f"{where}.{key} is not supported", f"{where}.{key}", "unsupported_parameter")
        content = _text(m.get("content"), where, role)
        raw_calls = m.get("tool_calls")
        if raw_calls is not None:
            if role != "assistant":
                raise ToolsError(f"{where}.tool_calls is only allowed on assistant messages", f"{where}.tool_calls",
                                 "unsupported_parameter")
            calls = _calls(raw_calls, where)
            open_calls = {call_id: name for call_id, name, _ in calls}
            rendered = render_calls([(name, args) for _, name, args in calls])
            content = f"{content}\n{rendered}" if content else rendered
        out.append({"role": ROLES[role], "content": content})
    flush(len(msgs))
    if spec is not None and spec.calls_allowed:
        text = tools_system_text(spec)
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out
