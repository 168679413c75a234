"""JSON in and out: orjson for speed, ASCII-safe output for JSONL that survives splitlines()."""

from __future__ import annotations

import json
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def reason(exc: orjson.JSONDecodeError) -> str:
    """Why a text is not JSON freight can read, for the user: the parser's reason and where. (Some are
    valid JSON that no string can hold, e.g. a lone surrogate escape such as ``"\\ud83d"``, which
    Python's json module reads without complaint: say which.)"""
    what = exc.msg
    if "surrogate" in what:
        what += " (a \\ud800-\\udfff escape without its pair: half an emoji, which no UTF-8 text can hold)"
    return f"{what}, column {exc.colno}"


def dumps(obj: Any) -> bytes:
    """Compact JSON, ASCII-only: U+2028/U+2029/U+0085 and every non-ASCII character escaped.

    Users split output files with ``str.splitlines()``, which breaks lines on those characters
    (shared/reference/batch-apis.md §3.3), so nothing outside ASCII is written raw.
    """
    data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    if data.isascii():
        return data
    return ascii_escape(data)


def encoded(data: bytes) -> Any:
    """JSON text already written by ``dumps``, to be placed as it is inside another value given to ``dumps``
    (the text is not parsed nor written again)."""
    return orjson.Fragment(data)


def ascii_escape(data: bytes) -> bytes:
    """Re-encode UTF-8 JSON text with every non-ASCII character as a \\u escape."""
    return json.dumps(orjson.loads(data), ensure_ascii=True, separators=(",", ":")).encode("ascii")
