"""What an upstream's rate-limit headers say, read from the network without ever raising.

``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (OpenAI, and the OpenAI-compatible servers
that copy it), ``Retry-After`` (RFC 9110: seconds or an HTTP date) and OpenAI's ``retry-after-ms``.
The limiter that acts on them is ``freight.domain.ratelimit``; this module only reads them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_SCALE = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_header_duration_s(value: str | None) -> float | None:
    """Seconds from a rate-limit header value: ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"`` or ``"2.5"``.

    None when absent or not understood (never raises: the value comes from the network). Not to be
    confused with ``freight.domain.durations.parse_duration_s`` (a user's ``"24h"``, which must be valid).
    """
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _SCALE[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return total


def parse_retry_after_s(retry_after: str | None, retry_after_ms: str | None, now_epoch: float) -> float | None:
    """How long the upstream asks us to wait: ``retry-after-ms`` (OpenAI), else ``Retry-After`` in
    seconds or as an HTTP date (RFC 9110). None when neither is present or understood."""
    if retry_after_ms is not None:
        try:
            ms = float(retry_after_ms.strip())
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    if retry_after is None:
        return None
    seconds = parse_header_duration_s(retry_after)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(retry_after.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


@dataclass(frozen=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` values of one response (None: absent or not a finite number)."""

    remaining_requests: float | None
    remaining_tokens: float | None
    reset_requests_s: float | None
    reset_tokens_s: float | None
    limit_requests: float | None
    limit_tokens: float | None


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_ratelimit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The ``x-ratelimit-*`` headers of a response (names in lower case), None when it has none."""
    if not any(name.lower().startswith("x-ratelimit-") for name in headers):
        return None
    return RateLimitHeaders(
        remaining_requests=_number(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_number(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_header_duration_s(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_header_duration_s(headers.get("x-ratelimit-reset-tokens")),
        limit_requests=_number(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_number(headers, "x-ratelimit-limit-tokens"),
    )
