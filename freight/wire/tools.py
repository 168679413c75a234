"""OpenAI function calling for a local model: the request's tools, the grammar's JSON schema, the model's answer.

A local model has no tool-calling API of its own; freight gives it one by convention and grammar
(docs/chat-model.md, "Function calling"):

- The tools are described in the system prompt (``freight.wire.tools_prompt``), and the model is told to
  answer a call as ``<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>``: the convention the
  SmolLM2 model card documents for the family (its chat template has no tools support of its own), the
  same ``<tool_call>`` tags as Hermes/Qwen's ChatML tool format.
- A llama.cpp grammar holds the model to it. ``call_schema`` is the JSON schema of what goes between the
  tags (an array of calls, each ``{"name": <one of the tools>, "arguments": <that tool's parameters>}``);
  the backend converts it to GBNF with its ``response_format`` converter, and ``wrap_grammar`` adds the tags
  and, for ``tool_choice: "auto"``, the alternative of plain text that does not start with the opening tag.
- ``parse_tool_calls`` reads a finished output back into calls (the grammar guarantees it parses when the
  output ended by itself; an output cut by ``max_tokens`` is left as text).

Nothing here imports llama.cpp: the pieces are pure, and tested as such (tests/test_tools_units.py).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
#: OpenAI's limit on ``tools``.
MAX_TOOLS = 128
#: Most calls one answer may hold with ``parallel_tool_calls``: a bound on a small model repeating itself.
MAX_PARALLEL_CALLS = 8
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_CHOICES = ("none", "auto", "required")
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
#: Integer ranges up to this many values are enforced (as an enum: the converter ignores minimum/maximum).
MAX_ENUM_RANGE = 256
#: GBNF rule names this module adds (the converter's rules are named after schema parts, never like these).
_CALLS_RULE = "freight-tool-calls"
_TEXT_RULE = "freight-text"
_ANY_RULE = "freight-any-char"


class ToolsError(ValueError):
    """A bad ``tools`` / ``tool_choice`` / tool message: a 400 naming ``param``."""

    def __init__(self, message: str, param: str, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    """What a request asks for: its tools, ``tool_choice`` and ``parallel_tool_calls``."""

    tools: tuple[Tool, ...]
    choice: str  # "none" | "auto" | "required" ("required" also for a named function)
    forced: str | None = None  # the named function of tool_choice {"type": "function", ...}
    parallel: bool = True

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tools)

    @property
    def callable_tools(self) -> tuple[Tool, ...]:
        """The tools a call may name (only the forced one when a function is named)."""
        return tuple(t for t in self.tools if self.forced is None or t.name == self.forced)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


def _tool(raw: Any, i: int) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(raw, dict):
        raise ToolsError(f"'{where}' must be an object", where, "invalid_type")
    if raw.get("type") != "function":
        raise ToolsError(f"'{where}.type' must be 'function' (the only tool type a local model runs)",
                         f"{where}.type", "unsupported_value")
    extra = sorted(k for k, v in raw.items() if k not in ("type", "function") and v is not None)
    if extra:
        raise ToolsError(f"Unrecognized key '{extra[0]}' in '{where}'", f"{where}.{extra[0]}", "unknown_parameter")
    fn = raw.get("function")
    if not isinstance(fn, dict):
        raise ToolsError(f"'{where}.function' must be an object", f"{where}.function", "invalid_type")
    extra = sorted(k for k, v in fn.items() if k not in _FUNCTION_KEYS and v is not None)
    if extra:
        raise ToolsError(f"Unrecognized key '{extra[0]}' in '{where}.function'", f"{where}.function.{extra[0]}",
                         "unknown_parameter")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ToolsError(f"'{where}.function.name' must be 1 to 64 letters, digits, underscores or dashes",
                         f"{where}.function.name")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolsError(f"'{where}.function.description' must be a string", f"{where}.function.description",
                         "invalid_type")
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = _EMPTY_PARAMETERS  # OpenAI: omitting parameters defines a function with an empty list
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolsError(f"'{where}.function.parameters' must be a JSON schema of type 'object'",
                         f"{where}.function.parameters")
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ToolsError(f"'{where}.function.strict' must be a boolean", f"{where}.function.strict", "invalid_type")
    return Tool(name, description, parameters)


def parse_tool_spec(body: dict[str, Any]) -> ToolSpec | None:
    """The tool request of an OpenAI chat body, or None when it has no ``tools``; ``ToolsError`` if invalid."""
    raw_tools = body.get("tools")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ToolsError("'parallel_tool_calls' must be a boolean", "parallel_tool_calls", "invalid_type")
    if raw_tools is None or raw_tools == []:
        if choice is not None and choice != "none":
            raise ToolsError("'tool_choice' is only allowed when 'tools' are specified", "tool_choice")
        if parallel is not None:
            raise ToolsError("'parallel_tool_calls' is only allowed when 'tools' are specified",
                             "parallel_tool_calls")
        return None
    if not isinstance(raw_tools, list):
        raise ToolsError("'tools' must be an array", "tools", "invalid_type")
    if len(raw_tools) > MAX_TOOLS:
        raise ToolsError(f"'tools' may hold at most {MAX_TOOLS} functions", "tools")
    tools = tuple(_tool(t, i) for i, t in enumerate(raw_tools))
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t.name in seen:
            raise ToolsError(f"'tools' names the function '{t.name}' twice", f"tools[{i}].function.name")
        seen.add(t.name)
    forced = None
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise ToolsError("'tool_choice' must be 'none', 'auto', 'required' or "
                             '{"type": "function", "function": {"name": ...}}', "tool_choice")
        if name not in seen:
            raise ToolsError(f"'tool_choice' names the function '{name}', which is not in 'tools'",
                             "tool_choice.function.name")
        choice, forced = "required", name
    elif choice not in TOOL_CHOICES:
        raise ToolsError("'tool_choice' must be 'none', 'auto', 'required' or "
                         '{"type": "function", "function": {"name": ...}}', "tool_choice")
    return ToolSpec(tools, choice, forced, True if parallel is None else parallel)


# ---- grammar ----------------------------------------------------------------------------------------------------

def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int_range(node: dict[str, Any]) -> tuple[int, int] | None:
    """The smallest and largest integer an integer schema allows, when it bounds both sides by numbers."""
    keys = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    if any(k in node and not _num(node[k]) for k in keys):  # e.g. draft 4's boolean exclusive bounds
        return None
    lows = [math.ceil(node["minimum"])] if "minimum" in node else []
    lows += [math.floor(node["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in node else []
    highs = [math.floor(node["maximum"])] if "maximum" in node else []
    highs += [math.ceil(node["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in node else []
    return (max(lows), min(highs)) if lows and highs else None


def enforce_int_ranges(node: Any) -> Any:
    """``node`` with every integer schema bounded on both sides by at most ``MAX_ENUM_RANGE`` values written as
    an ``enum`` of those values, so that the grammar enforces ``minimum``/``maximum`` (and the exclusive ones)."""
    if isinstance(node, list):
        return [enforce_int_ranges(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: enforce_int_ranges(v) for k, v in node.items()}
    if out.get("type") == "integer" and not {"enum", "const", "multipleOf"} & out.keys():
        bounds = _int_range(out)
        if bounds is not None and 0 <= bounds[1] - bounds[0] < MAX_ENUM_RANGE:
            return {"enum": list(range(bounds[0], bounds[1] + 1))}
    return out


def _rewrite_refs(node: Any, prefix: str, key: str) -> Any:
    """``node`` with its local ``$ref``s pointing into ``#/$defs/<key>`` (and its defs renamed ``prefix``-...)."""
    if isinstance(node, list):
        return [_rewrite_refs(x, prefix, key) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = _rewrite_ref(v, prefix, key)
        elif k in ("$defs", "definitions") and isinstance(v, dict):
            out[k] = {f"{prefix}-{name}": _rewrite_refs(sub, prefix, key) for name, sub in v.items()}
        elif k == "properties" and isinstance(v, dict):  # property names are data, not schema keywords
            out[k] = {name: _rewrite_refs(sub, prefix, key) for name, sub in v.items()}
        else:
            out[k] = _rewrite_refs(v, prefix, key)
    return out


def _rewrite_ref(ref: str, prefix: str, key: str) -> str:
    if ref == "#":
        return f"#/$defs/{key}"
    m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
    if m is None:
        raise ToolsError(f"unsupported $ref {ref!r} in a tool's parameters (only '#', '#/$defs/<name>' and "
                         "'#/definitions/<name>')", "tools")
    return f"#/$defs/{key}/{m.group(1)}/{prefix}-{m.group(2)}"


def call_schema(spec: ToolSpec) -> dict[str, Any]:
    """The JSON schema of what the model writes between the tags: an array of calls of the callable tools.

    Each tool's parameters sit under ``$defs`` (their own ``$ref``s rewritten to point there), so tools whose
    schemas use the same definition names do not collide."""
    defs: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for i, tool in enumerate(spec.callable_tools):
        key = f"tool{i}-parameters"
        defs[key] = _rewrite_refs(tool.parameters, f"tool{i}", key)
        calls.append({
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": {"$ref": f"#/$defs/{key}"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    item: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {
        "type": "array",
        "items": item,
        "minItems": 1,
        "maxItems": MAX_PARALLEL_CALLS if spec.parallel else 1,
        "$defs": defs,
    }


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid GBNF literal for these ASCII tags


def _not_prefix_rule(tag: str) -> str:
    """GBNF for a non-empty text that does not start with whitespace or with ``tag``.

    Per proper prefix p of ``tag``: p followed by anything but the tag's next character (and then anything),
    or p itself and the end (a text that is a strict prefix of the tag)."""
    alts: list[str] = []
    for k in range(len(tag)):
        head = _gbnf_literal(tag[:k]) + " " if k else ""
        nxt = tag[k]
        if not (nxt.isalnum() or nxt in "<>_/"):
            raise ValueError(f"tag character {nxt!r} would need escaping in a GBNF class")
        if k == 0:
            alts.append(f"[^{nxt}\\x09\\x0A\\x0D\\x20] {_ANY_RULE}*")
        else:
            alts.append(f"{head}[^{nxt}] {_ANY_RULE}*")
            alts.append(head.strip())
    return " | ".join(f"( {a} )" for a in alts)


def wrap_grammar(calls_gbnf: str, spec: ToolSpec) -> str:
    """The request's grammar from the converter's GBNF of ``call_schema(spec)`` (root rule ``root``).

    A forced call (``required`` or a named function): exactly ``<tool_call>`` calls ``</tool_call>``.
    ``auto``: that, or a text that does not start with the tag or with whitespace (or nothing at all)."""
    if not spec.calls_allowed:
        raise ValueError("no grammar for tool_choice 'none'")
    body, n = re.subn(r"^root ::= ", f"{_CALLS_RULE} ::= ", calls_gbnf, count=1, flags=re.MULTILINE)
    if n != 1:
        raise ValueError("the calls grammar has no root rule")
    call = f"{_gbnf_literal(TOOL_CALL_OPEN)} {_CALLS_RULE} {_gbnf_literal(TOOL_CALL_CLOSE)}"
    if spec.choice == "required":
        return f"root ::= {call}\n{body}"
    rules = [
        f"root ::= ( {call} | {_TEXT_RULE} )?",
        f"{_TEXT_RULE} ::= {_not_prefix_rule(TOOL_CALL_OPEN)}",
        f"{_ANY_RULE} ::= [^\\x00]",
        body,
    ]
    return "\n".join(rules)


# ---- the model's answer -----------------------------------------------------------------------------------------

def parse_tool_calls(text: str, spec: ToolSpec) -> list[ToolCall] | None:
    """The calls in a finished output, or None when it is text (no tag, or not a complete well-formed call)."""
    if not spec.calls_allowed or not text.startswith(TOOL_CALL_OPEN):
        return None
    inner = text[len(TOOL_CALL_OPEN):].rstrip()
    if not inner.endswith(TOOL_CALL_CLOSE):
        return None
    try:
        raw = json.loads(inner[: -len(TOOL_CALL_CLOSE)])
    except ValueError:
        return None
    items = raw if isinstance(raw, list) else [raw]
    calls: list[ToolCall] = []
    names = {t.name for t in spec.callable_tools}
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "arguments"}:
            return None
        name, arguments = item["name"], item["arguments"]
        if name not in names or not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(name, arguments))
    if not calls or (not spec.parallel and len(calls) > 1):
        return None
    return calls


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def openai_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """``message.tool_calls`` of a chat completion."""
    return [
        {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in calls
    ]
