"""The result cache's key and policy (issue 13): which requests may be answered from the cache, and
the canonical hash that says two requests are the same.

The key is the SHA-256 of the RFC 8785 (JSON Canonicalization Scheme) serialization of
``{"endpoint", "model_identity", "body"}``, where ``body`` is the request body minus
``IRRELEVANT_FIELDS`` (fields that cannot change the answer). RFC 8785: object members sorted by
the UTF-16 code units of their names, no whitespace, strings escaped as ECMAScript's
``JSON.stringify`` does (the short escapes, other control characters as ``\\u00xx``, everything
else as UTF-8), numbers as ECMAScript's ``Number.prototype.toString`` writes them (shortest
round-trip digits; ``1e21`` and up and below ``1e-6`` in exponent form; ``-0`` as ``0``; integers
beyond 2**53 through the nearest double, as a JSON parser in ECMAScript would read them).
A lone surrogate in a string (which RFC 8785 refuses) is hashed as its own code unit, not refused.

Speed: a value with no float, no integer beyond 2**53 and only ASCII member names (the common
request body) is written by the standard library's C JSON encoder, whose output for such a value is
byte for byte the RFC 8785 form (the same escapes; code point order is UTF-16 order for ASCII
names); anything else goes through the spec-literal writer below. Both are property-tested against
the independent ``rfc8785`` package and against each other (tests/test_cache_key.py).

Policy (``cacheable``): deterministic requests only. Embeddings always; chat completions,
completions, Responses and Messages when ``temperature`` is 0 or a ``seed`` is given. A request
asking for several choices (``n`` > 1) is cached only under the same rule (temperature 0 or a seed).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: Body fields that cannot change the answer: who asked, bookkeeping, delivery and billing tier.
IRRELEVANT_FIELDS = frozenset({
    "user", "metadata", "store", "stream_options", "service_tier", "safety_identifier", "prompt_cache_key",
    "prompt_cache_retention",
})

#: Put on a stored request body at ingest when its batch said ``cache: false`` (taken off before it is sent).
NO_CACHE_KEY = "__freight_no_cache"
#: ``[cache] scope``: "project" (each project its own entries; the default) or "global" (shared by all).
SCOPES = ("project", "global")

_MAX_SAFE = 2 ** 53
#: A string as JSON.stringify writes it: the short escapes for quote, backslash, backspace, form feed,
#: newline, return and tab; other control characters as a lower-case \u00xx; the rest (lone surrogates
#: included) as it is. (The standard library's C string encoder does exactly that.)
_string = json.encoder.encode_basestring
#: The C encoder, for values ``_plain`` accepts.
_plain_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False,
                               check_circular=False).encode


def number(value: int | float) -> str:
    """A JSON number as ECMAScript's ``Number.prototype.toString`` writes it (RFC 8785 3.2.2.3)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -_MAX_SAFE <= value <= _MAX_SAFE:
            return str(value)
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript's algorithm does.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # value = 0.<digits> * 10**point (ECMAScript's n); 0.000123 has its point left of three zeros.
    point = len(whole) if whole != "0" else -(len(frac) - len(frac.lstrip("0")))
    point += int(exp_text) if exp_text else 0
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exp = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if exp >= 0 else '-'}{abs(exp)}"


def _utf16(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _plain(value: Any) -> bool:
    """Whether the C encoder writes ``value`` exactly as RFC 8785 does (see the module's note on speed)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_SAFE <= value <= _MAX_SAFE)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def canonical(value: Any) -> str:
    """The RFC 8785 serialization of a JSON value (dict, list, str, int, float, bool, None)."""
    if _plain(value):
        return _plain_json(value)
    return _general(value)


def _general(value: Any) -> str:
    """RFC 8785 as the spec says it, for any JSON value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, Mapping):
        names = sorted(value, key=_utf16)
        return "{" + ",".join(_string(k) + ":" + canonical(value[k]) for k in names) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_bytes(value: Any) -> bytes:
    return canonical(value).encode("utf-8", "surrogatepass")


def cache_key(endpoint: str, body: Mapping[str, Any], model_identity: str, project: str | None = None) -> str:
    """The hex SHA-256 that two requests with the same answer share; with ``project``, only within it."""
    kept = {k: v for k, v in body.items() if k not in IRRELEVANT_FIELDS}
    doc: dict[str, Any] = {"endpoint": endpoint, "model_identity": model_identity, "body": kept}
    if project is not None:
        doc["project"] = project
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def cacheable(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the answer to this request is deterministic enough to reuse (see the module's policy)."""
    if endpoint == "/v1/embeddings":
        return True
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, bool) and isinstance(seed, int):
        return True
    return _number_or_none(body.get("temperature")) == 0.0
