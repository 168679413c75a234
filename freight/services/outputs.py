"""Answers checked against the JSON schema their request asked for (issue 12, "outputs validated").

A chat request asks for a schema with ``response_format: {"type": "json_schema", "json_schema":
{"schema": ...}}`` (the answer's content, parsed as JSON, must satisfy it) or by forcing a tool call
(``tool_choice`` naming a function: its arguments must satisfy the function's ``parameters``). A
batch may add its own check for every answer: ``output_schema`` on create.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from freight.domain.cache_key import NO_CACHE_KEY
from freight.domain.errors import InvalidInput
from freight.wire import jsonx


def check_output_schema(value: object) -> dict[str, Any] | None:
    """``output_schema`` on create: absent/null, or a JSON schema (an object that is a valid schema)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("Invalid type for 'output_schema': expected a JSON schema object.",
                           param="output_schema", code="invalid_type")
    from jsonschema import Draft202012Validator  # (imported when needed: 60-150 ms at every start otherwise)
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise InvalidInput(f"Invalid 'output_schema': {exc.message}.", param="output_schema",
                           code="invalid_value") from None
    if (outside := ref_outside(value)) is not None:
        raise InvalidInput(f"Invalid 'output_schema': {_outside_message(outside)}", param="output_schema",
                           code="invalid_value")
    return dict(value)


#: Keywords whose values are data, not schemas (a "$ref" inside them is not a reference).
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def ref_outside(schema: dict[str, Any]) -> str | None:
    """The first ``$ref``/``$dynamicRef`` of ``schema`` that points outside it (None: every one is inside).

    A schema is checked with no network and no file access (``_validate``): a reference to a URL or a
    file would otherwise be fetched by the validator, on the server, for whoever sent the schema. A
    reference within the schema (``#/$defs/x``, an ``$anchor``, a subschema's own ``$id``) is fine."""
    refs: list[tuple[str, str]] = []  # (base URI, reference)

    def walk(node: object, base: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$id"), str):
                base = urljoin(base, node["$id"])
            for key in ("$ref", "$dynamicRef"):
                if isinstance(node.get(key), str):
                    refs.append((base, node[key]))
            for key, value in node.items():
                if key not in _DATA_KEYWORDS:
                    walk(value, base)
        elif isinstance(node, list):
            for value in node:
                walk(value, base)

    walk(schema, "")
    if all(base == "" and ref.startswith("#") for base, ref in refs):
        return None  # (the common case, without building a registry)
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    try:
        root = DRAFT202012.create_resource(schema)
        registry = Registry().with_resource("", root)
        if root.id():
            registry = registry.with_resource(root.id() or "", root)
        resolver = registry.crawl().resolver()
    except Exception:  # a schema too malformed to index (a list where a subschema goes): plain refs only
        return next(ref for base, ref in refs if not (base == "" and ref.startswith("#")))
    for base, ref in refs:
        try:
            resolver.lookup(urljoin(base, ref))
        except Unresolvable:
            return ref
    return None


def _outside_message(ref: str) -> str:
    return (f"its reference {ref!r} points outside the schema; freight resolves only references within the "
            "schema itself (no URLs, no files).")


#: The key under which ingest gives each request its batch's ``output_schema`` (popped before sending).
BATCH_SCHEMA_KEY = "__freight_output_schema"


@dataclass(frozen=True)
class Check:
    """What an answer must satisfy: ``schema`` for the request's structured output, ``batch_schema``
    (the batch's ``output_schema``) too. Both check the content parsed as JSON — or, when ``tool``
    names a forced tool, that tool's arguments."""

    schema: dict[str, Any] | None = None
    tool: str | None = None
    batch_schema: dict[str, Any] | None = None


def unusable(check: Check) -> str | None:
    """Why a check's schema cannot be used (a reference outside it), or None: the request is refused
    before it is sent (its schema would fail every answer)."""
    for whose, schema in (("request's", check.schema), ("batch's output_schema", check.batch_schema)):
        if schema is not None and (outside := ref_outside(schema)) is not None:
            return f"The {whose} JSON schema is not usable: {_outside_message(outside)}"
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def requested_check(endpoint: str, body: dict[str, Any], batch_schema: dict[str, Any] | None) -> Check | None:
    """The check a request asks for (None: none)."""
    schema: dict[str, Any] | None = None
    tool: str | None = None
    if endpoint == "/v1/chat/completions":
        fmt = _dict(body.get("response_format"))
        if fmt.get("type") == "json_schema":
            schema = _dict(_dict(fmt.get("json_schema")).get("schema"))
        elif fmt.get("type") == "json_object":
            schema = {"type": "object"}
        choice = _dict(body.get("tool_choice"))
        name = _dict(choice.get("function")).get("name") if choice.get("type") == "function" else None
        if isinstance(name, str):
            for t in body.get("tools") or []:
                fn = _dict(_dict(t).get("function"))
                if fn.get("name") == name:
                    schema, tool = _dict(fn.get("parameters")), name
    elif endpoint == "/v1/responses":
        fmt = _dict(_dict(body.get("text")).get("format"))
        if fmt.get("type") == "json_schema":
            schema = _dict(fmt.get("schema"))
        elif fmt.get("type") == "json_object":
            schema = {"type": "object"}
    elif endpoint == "/v1/messages":
        choice = _dict(body.get("tool_choice"))
        name = choice.get("name") if choice.get("type") == "tool" else None
        if isinstance(name, str):
            for t in body.get("tools") or []:
                if _dict(t).get("name") == name:
                    schema, tool = _dict(_dict(t).get("input_schema")), name
    if schema is None and batch_schema is None:
        return None
    return Check(schema=schema, tool=tool, batch_schema=batch_schema)


def _answers(endpoint: str, response: dict[str, Any], tool: str | None) -> list[tuple[str, Any]]:
    """(what, value) per answer in a response: the content text, or the forced tool's arguments
    (``value`` is a str of JSON, or an already parsed object, or None when missing)."""
    out: list[tuple[str, Any]] = []
    if endpoint == "/v1/chat/completions":
        for choice in response.get("choices") or []:
            message = _dict(_dict(choice).get("message"))
            if tool is None:
                out.append(("content", message.get("content")))
                continue
            args = [_dict(c.get("function")).get("arguments") for c in message.get("tool_calls") or []
                    if _dict(_dict(c).get("function")).get("name") == tool]
            out.append((f"the arguments of {tool}", args[0] if args else None))
    elif endpoint == "/v1/responses":
        texts = [part.get("text") for item in response.get("output") or [] for part in _dict(item).get("content") or []
                 if _dict(part).get("type") == "output_text"]
        out.append(("content", "".join(t for t in texts if isinstance(t, str)) if texts else None))
    elif endpoint == "/v1/messages":
        blocks = [_dict(b) for b in response.get("content") or []]
        if tool is not None:
            inputs = [b.get("input") for b in blocks if b.get("type") == "tool_use" and b.get("name") == tool]
            out.append((f"the input of {tool}", inputs[0] if inputs else None))
        else:
            texts = [b.get("text") for b in blocks if b.get("type") == "text"]
            out.append(("content", "".join(t for t in texts if isinstance(t, str)) if texts else None))
    return out


def _validate(value: Any, schema: dict[str, Any], what: str) -> str | None:
    if value is None:
        return f"the answer has no {what}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return f"{what} is not JSON ({exc.msg} at character {exc.pos})"
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    try:
        # An empty registry: a reference is looked up in the schema itself, never fetched (no URL, no file).
        error = best_match(Draft202012Validator(schema, registry=Registry()).iter_errors(value))
    except Unresolvable as exc:
        return "the schema is not usable: " + _outside_message(str(getattr(exc, "ref", exc)))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{what} does not match the schema" + (f" at '{where}'" if where else "") + f": {error.message}"


def check_answer(endpoint: str, response_body: bytes | None, check: Check) -> str | None:
    """None when the answer satisfies ``check``; else what is wrong (for its ``output_invalid`` line)."""
    try:
        response = json.loads(response_body) if response_body else None
    except ValueError:
        return "the answer is not JSON"
    if not isinstance(response, dict):
        return "the answer is not a JSON object"
    answers = _answers(endpoint, response, check.tool)
    if not answers:
        return "the answer has no content"
    for what, value in answers:
        if check.schema is not None:
            problem = _validate(value, check.schema, what)
            if problem:
                return problem
        if check.batch_schema is not None:
            problem = _validate(value, check.batch_schema, what + " (output_schema)")
            if problem:
                return problem
    return None


def with_batch_schema(body: bytes, schema: dict[str, Any] | None) -> bytes:
    """A stored request body that carries its batch's ``output_schema`` (for the output check)."""
    if schema is None:
        return body
    parsed = jsonx.loads(body)
    parsed[BATCH_SCHEMA_KEY] = schema
    return jsonx.dumps(parsed)


def without_cache(body: bytes) -> bytes:
    """A stored request body whose batch said ``cache: false`` (freight/backends/result_cache.py)."""
    parsed = jsonx.loads(body)
    parsed[NO_CACHE_KEY] = True
    return jsonx.dumps(parsed)


#: Keys freight adds to a stored request body for itself (the batch's ``output_schema``, ``cache:
#: false``); a backend takes them off before sending, and so does a batch lane (engine/lanes.py).
INTERNAL_PREFIX = b'"__freight_'


def for_upstream(body: bytes) -> bytes:
    """A stored request body as an upstream gets it: without freight's own keys."""
    if INTERNAL_PREFIX not in body:
        return body
    parsed = jsonx.loads(body)
    return jsonx.dumps({k: v for k, v in parsed.items() if not k.startswith("__freight_")})


def stored_check(endpoint: str, body: bytes) -> Check | None:
    """The check a stored request body asks for (its own structured output, its batch's ``output_schema``)."""
    parsed = jsonx.loads(body)
    if not isinstance(parsed, dict):
        return None
    batch_schema = parsed.pop(BATCH_SCHEMA_KEY, None)
    return requested_check(endpoint, parsed, batch_schema if isinstance(batch_schema, dict) else None)
