"""A hostile upstream: answers that quote the API key it received, in every form that slips past a naive
search-and-replace. For tests that check freight never stores, answers or logs the key.

A request is answered so when the configuration says (``leak_key`` = a mode, ``leak_status``) or when
its text contains ``leak=<mode>/<status>`` (e.g. ``leak=unicode/400``: one test server, every mode).
Modes:

- ``plain``: the key as is, in compact JSON;
- ``slashes``: every ``/`` of the body written ``\\/`` (valid JSON; a key with a ``/`` changes form);
- ``unicode``: pretty-printed JSON (several lines), one character of the key ``\\u``-escaped;
- ``request_id``: the key as the ``x-request-id`` header.

Status 200 puts the key in the generated text (chat, completions, responses) or beside the vectors
(embeddings); any other status in an OpenAI error's message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from freight.testing.upstream.bodies import CHAT, COMPLETIONS, EMBEDDINGS, error_body

LEAK_MODES = ("plain", "slashes", "unicode", "request_id")
_MARKER = re.compile(r"leak=(" + "|".join(LEAK_MODES) + r")/(\d{3})")


def _texts(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [t for item in obj for t in _texts(item)]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _texts(value)]
    return []


def leak_wanted(body: dict[str, Any], mode: str, status: int) -> tuple[str, int] | None:
    """(mode, status) of the leak this request asks for (its text first, then the configuration)."""
    for field_name in ("messages", "prompt", "input"):
        for text in _texts(body.get(field_name)):
            match = _MARKER.search(text)
            if match:
                return match.group(1), int(match.group(2))
    if mode:
        if mode not in LEAK_MODES:
            raise ValueError(f"leak_key must be one of {LEAK_MODES}, got {mode!r}")
        return mode, status
    return None


def _with_key(endpoint: str, response: dict[str, Any], token: str) -> dict[str, Any]:
    said = f"Your key is {token}, as received."
    if endpoint == CHAT:
        response["choices"][0]["message"]["content"] = said
    elif endpoint == COMPLETIONS:
        response["choices"][0]["text"] = said
    elif endpoint == EMBEDDINGS:
        response["note"] = said
    else:
        response["output"][0]["content"][0]["text"] = said
    return response


def leak_reply(mode: str, status: int, endpoint: str, response: dict[str, Any], token: str,
               request_id: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """(status, body, headers) of an answer that quotes ``token`` as ``mode`` says."""
    if mode == "request_id":
        obj = response if status == 200 else error_body("The request was refused.", "invalid_request_error")
        return status, json.dumps(obj, separators=(",", ":")).encode(), [("x-request-id", token)]
    if status == 200:
        obj = _with_key(endpoint, response, token)
    else:
        obj = error_body(f"Incorrect API key provided: {token}. You can find your API key at "
                         "https://platform.example/account/api-keys.", "invalid_request_error",
                         code="invalid_api_key")
    headers = [("x-request-id", request_id)]
    if mode == "slashes":
        return status, json.dumps(obj, separators=(",", ":")).replace("/", "\\/").encode(), headers
    text = json.dumps(obj, indent=2)
    if token:
        middle = len(token) // 2
        escaped = token[:middle] + f"\\u{ord(token[middle]):04x}" + token[middle + 1:]
        text = text.replace(token, escaped, 1)
    return status, text.encode(), headers
