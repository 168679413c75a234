"""Token counts of OpenAI requests and responses, before and after sending (no tokenizer: estimates).

Prompt tokens from the characters of the prompt (``chars / 4``; the caller may scale that by the ratio
of real to estimated prompt tokens it observed), plus 4 per chat message and 3 per request; token-id
inputs count exactly; 765 per image. Output: ``max_completion_tokens``/``max_tokens``/``max_output_tokens``
times ``n`` (16 for legacy completions without one), None when the request gives no maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"

#: Characters per token of the fallback estimate (OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
TOKENS_PER_IMAGE = 765
#: Output estimate per choice before any response was seen, when the request gives no maximum.
DEFAULT_OUTPUT_TOKENS = 256
#: Legacy completions' own default ``max_tokens``.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def _count_chars(obj: Any, depth: int = 0) -> tuple[int, int, int]:
    """(characters of text, exact tokens of token-id lists, images) anywhere in a prompt structure."""
    if depth > 32:
        return 0, 0, 0
    if isinstance(obj, str):
        return len(obj), 0, 0
    if isinstance(obj, list):
        if obj and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            return 0, len(obj), 0
        chars = tokens = images = 0
        for item in obj:
            c, t, i = _count_chars(item, depth + 1)
            chars, tokens, images = chars + c, tokens + t, images + i
        return chars, tokens, images
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind in ("image_url", "input_image", "image"):
            return 0, 0, 1
        chars = tokens = images = 0
        for key, value in obj.items():
            if key in ("type", "role", "detail"):
                continue
            c, t, i = _count_chars(value, depth + 1)
            chars, tokens, images = chars + c, tokens + t, images + i
        return chars, tokens, images
    return 0, 0, 0


def prompt_parts(endpoint: str, body: Mapping[str, Any]) -> tuple[int, int]:
    """(characters to estimate from, tokens known exactly: token ids, per-message overheads, images)."""
    fields: tuple[str, ...]
    overhead = TOKENS_PER_REQUEST
    if endpoint == CHAT:
        fields = ("messages", "tools", "functions", "response_format")
        messages = body.get("messages")
        if isinstance(messages, list):
            overhead += TOKENS_PER_MESSAGE * len(messages)
    elif endpoint == COMPLETIONS:
        fields = ("prompt", "suffix")
    elif endpoint == EMBEDDINGS:
        fields = ("input",)
        overhead = 0
    else:
        fields = ("input", "instructions", "tools", "text")
    chars = exact = images = 0
    for name in fields:
        c, t, i = _count_chars(body.get(name))
        chars, exact, images = chars + c, exact + t, images + i
    return chars, exact + overhead + TOKENS_PER_IMAGE * images


def positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def choices_requested(body: Mapping[str, Any]) -> int:
    """``n``: how many choices the request asks for (1 when it does not say)."""
    return positive_int(body.get("n")) or 1


def requested_output(endpoint: str, body: Mapping[str, Any]) -> int | None:
    """The most output tokens the request may produce, when it says (None: it does not)."""
    n = choices_requested(body)
    if endpoint == CHAT:
        cap = positive_int(body.get("max_completion_tokens")) or positive_int(body.get("max_tokens"))
    elif endpoint == COMPLETIONS:
        cap = positive_int(body.get("max_tokens")) or COMPLETIONS_DEFAULT_MAX_TOKENS
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int):
            n *= len(prompts)
        n = max(n, positive_int(body.get("best_of")) or 1)  # best_of choices are generated (and billed)
    elif endpoint == RESPONSES:
        cap = positive_int(body.get("max_output_tokens"))
    else:
        return 0
    return None if cap is None else cap * n


def usage_tokens(endpoint: str, usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens of a response's ``usage``, None when it has none."""
    if not isinstance(usage, dict):
        return None

    def get(*names: str) -> int | None:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    prompt = get("prompt_tokens", "input_tokens")
    output = get("completion_tokens", "output_tokens")
    total = get("total_tokens")
    if prompt is None and total is None:
        return None
    if prompt is None:
        prompt = max(0, (total or 0) - (output or 0))
    if output is None:
        output = max(0, (total or prompt) - prompt) if endpoint != EMBEDDINGS else 0
    return prompt, output
