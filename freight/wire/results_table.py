"""One row per request of a batch, for people and data frames: ``freight results``, ``freight.client``.

Each row: ``custom_id``, ``status`` ("succeeded" / "failed"), ``answer`` (the message text — parsed
JSON when the request or its batch's ``output_schema`` asked for a schema —, the tool call's
arguments, the embedding, the completion text), ``input_tokens``, ``output_tokens``, ``cost_usd`` (the
tokens at the batch's effective rates, when it has them; an answer from the result cache is priced too,
though it cost nothing this time: the lines do not say which were cached), ``error_code``, ``error_message``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

COLUMNS = ("custom_id", "status", "answer", "input_tokens", "output_tokens", "cost_usd", "error_code",
           "error_message")


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def asks_for_json(body: Mapping[str, Any]) -> bool:
    fmt = _d(body.get("response_format")) or _d(_d(body.get("text")).get("format"))
    return fmt.get("type") in ("json_schema", "json_object")


def _maybe_json(text: Any, parse: bool) -> Any:
    if parse and isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def answer_of(response: Mapping[str, Any], request: Mapping[str, Any] | None, json_answers: bool = False) -> Any:
    """The useful part of a 2xx response body (its text parsed as JSON when the request asked for a schema,
    or ``json_answers``: the batch's ``output_schema`` checked every answer as JSON)."""
    parse = json_answers or (request is not None and asks_for_json(request))
    if "choices" in response:
        choice = _d((response.get("choices") or [{}])[0])
        message = _d(choice.get("message"))
        if message:
            calls = message.get("tool_calls") or []
            if message.get("content") is None and calls:
                return _maybe_json(_d(_d(calls[0]).get("function")).get("arguments"), True)
            return _maybe_json(message.get("content"), parse)
        return choice.get("text")
    if response.get("object") == "list" and isinstance(response.get("data"), list):
        vectors = [_d(item).get("embedding") for item in response["data"]]
        return vectors[0] if len(vectors) == 1 else vectors
    if isinstance(response.get("output"), list):
        texts = [p.get("text") for item in response["output"] for p in _d(item).get("content") or []
                 if _d(p).get("type") == "output_text"]
        return _maybe_json("".join(t for t in texts if isinstance(t, str)), parse)
    if isinstance(response.get("content"), list):
        blocks = [_d(b) for b in response["content"]]
        tools = [b.get("input") for b in blocks if b.get("type") == "tool_use"]
        if tools:
            return tools[0]
        return "".join(str(b.get("text")) for b in blocks if b.get("type") == "text")
    return response


def _tokens(usage: Mapping[str, Any]) -> tuple[int, int]:
    tokens_in = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tokens_out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (tokens_in if isinstance(tokens_in, int) else 0), (tokens_out if isinstance(tokens_out, int) else 0)


def row_of(line: Mapping[str, Any], request: Mapping[str, Any] | None,
           rates: Mapping[str, Any] | None, json_answers: bool = False) -> dict[str, Any]:
    """The row of one output or error line (``request``: its body from the input file, if known)."""
    response = _d(line.get("response"))
    error = _d(line.get("error"))
    body = response.get("body")
    status_code = response.get("status_code")
    ok = isinstance(status_code, int) and 200 <= status_code < 300
    tokens_in, tokens_out = _tokens(_d(_d(body).get("usage")))
    cost = None
    if rates and isinstance(rates.get("input_usd_per_mtok"), int | float):
        cost = (tokens_in * rates["input_usd_per_mtok"] + tokens_out * rates["output_usd_per_mtok"]) / 1e6
    if not ok and response:
        err = _d(_d(body).get("error"))
        error = {"code": err.get("code") or err.get("type") or f"http_{status_code}",
                 "message": err.get("message")}
    return {
        "custom_id": line.get("custom_id"),
        "status": "succeeded" if ok else "failed",
        "answer": answer_of(_d(body), request, json_answers) if ok else None,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": cost,
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def rows_of(lines: Iterable[Mapping[str, Any]], requests: Mapping[str, Mapping[str, Any]],
            rates: Mapping[str, Any] | None, json_answers: bool = False) -> list[dict[str, Any]]:
    """``json_answers``: the batch has an ``output_schema`` (every answer was checked as JSON: parse it)."""
    return [row_of(line, requests.get(str(line.get("custom_id"))), rates, json_answers) for line in lines]
