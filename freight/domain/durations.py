"""Completion windows: OpenAI's "24h" and freight's "<number><s|m|h|d>" extension."""

from __future__ import annotations

import re

from freight.domain.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^([0-9]{1,9})([smhd])$")


def parse_duration_s(text: str) -> int:
    """Seconds in a duration such as "90s", "30m", "24h" or "7d"."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected a number and one of s, m, h, d, like '24h')")
    return int(match.group(1)) * _UNITS[match.group(2)]


def completion_window_s(text: object, *, min_s: int, max_s: int) -> int:
    """Validate a batch's completion_window against the configured bounds."""
    if not isinstance(text, str):
        raise InvalidInput(
            f"Invalid type for 'completion_window': expected a string, but got {type(text).__name__} instead.",
            param="completion_window",
            code="invalid_type",
        )
    try:
        seconds = parse_duration_s(text)
    except ValueError:
        raise InvalidInput(
            f"Invalid value: {text!r}. Supported values are: '24h', or a duration like '90s', '30m', '7d'.",
            param="completion_window",
            code="invalid_value",
        ) from None
    if not min_s <= seconds <= max_s:
        raise InvalidInput(
            f"Invalid value: {text!r}. completion_window must be between {min_s}s and {max_s}s on this server.",
            param="completion_window",
            code="invalid_value",
        )
    return seconds
