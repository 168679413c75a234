"""What the ``openai`` backend checks of URLs and of 2xx bodies."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from freight.domain.errors import ConfigError
from freight.domain.secrets import redact_url
from freight.wire.token_estimate import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES

ENDPOINTS = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES})
__all__ = ["ENDPOINTS", "endpoint_url", "missing_fields", "normalize_base_url", "redact_url"]


def missing_fields(endpoint: str, body: Any) -> str | None:
    """What a 2xx body lacks for its endpoint (None: it has what a client needs)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if endpoint in (CHAT, COMPLETIONS):
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            return "no 'choices'"
        for choice in choices:
            if not isinstance(choice, dict):
                return "a choice is not an object"
            if endpoint == CHAT and not isinstance(choice.get("message"), dict):
                return "a choice has no 'message'"
            if endpoint == COMPLETIONS and not isinstance(choice.get("text"), str):
                return "a choice has no 'text'"
        return None
    if endpoint == EMBEDDINGS:
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return "no 'data'"
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
                return "an item of 'data' has no 'embedding'"
        return None
    if endpoint == RESPONSES:
        if not isinstance(body.get("output"), list):
            return "no 'output'"
        return None
    return None


def normalize_base_url(base_url: str, where: str = "") -> str:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}base_url must be an http(s) URL, got {redact_url(base_url)!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def endpoint_url(base_url: str, endpoint: str) -> str:
    """As the OpenAI SDK does: ``base_url`` includes ``/v1``; the endpoint's ``/v1`` is dropped."""
    return base_url + endpoint.removeprefix("/v1")
