"""How many tokens a batch file will use, what it will cost and how long it will take, before running it.

Input tokens: counted by the model's own tokenizer when one is at hand (``count`` — local models),
else estimated as one token per 4 characters of the text the model reads (message contents, the
prompt, the embedding input), plus 4 per chat message. Output tokens: the request's own limit
(``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``) when it sets one, else
``DEFAULT_OUTPUT_TOKENS``; none for embeddings. docs/cost.md says the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from freight.domain import pricing

#: Output tokens assumed for a generation request that sets no limit.
DEFAULT_OUTPUT_TOKENS = 256
#: Characters per token of the estimate (OpenAI's rule of thumb for English text).
CHARS_PER_TOKEN = 4
#: Tokens a chat message costs beyond its content (role, separators).
PER_MESSAGE_TOKENS = 4
_OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

Counter = Callable[[str], int]


def heuristic_count(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _text(content: object) -> str:
    """The text of a message content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text(part.get("text")) if isinstance(part, dict) else _text(part) for part in content)
    return ""


def input_texts(endpoint: str, body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts a request's model reads, and the fixed tokens around them."""
    if endpoint == "/v1/embeddings":
        value = body.get("input")
        items = value if isinstance(value, list) else [value]
        return [x for x in items if isinstance(x, str)], sum(len(x) for x in items if isinstance(x, list))
    if endpoint == "/v1/completions":
        prompt = body.get("prompt")
        return ([prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
                if isinstance(prompt, list) else []), 0
    messages: list[Any] = []
    texts: list[str] = []
    if endpoint == "/v1/responses":
        value = body.get("input")
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            messages = value
        if isinstance(body.get("instructions"), str):
            texts.append(body["instructions"])
    else:  # chat completions, messages
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []  # type: ignore[assignment]
        if body.get("system") is not None:
            texts.append(_text(body.get("system")))
    for m in messages:
        if isinstance(m, dict):
            texts.append(_text(m.get("content")))
    return texts, PER_MESSAGE_TOKENS * len(messages) + (3 if messages else 0)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def generations(endpoint: str, body: dict[str, Any]) -> int:
    """How many answers a request's output limit applies to (each is billed): ``n`` on chat completions;
    ``n`` or, if more, ``best_of`` on completions (``best_of`` candidates are generated and billed); 1 else."""
    if endpoint == "/v1/chat/completions":
        return _count(body.get("n"))
    if endpoint == "/v1/completions":
        return max(_count(body.get("n")), _count(body.get("best_of")))
    return 1


def output_limit(endpoint: str, body: dict[str, Any]) -> int | None:
    """The output tokens a request can use at most: its own limit for each of its answers (``generations``),
    0 for embeddings; None when it sets none."""
    if endpoint == "/v1/embeddings":
        return 0
    for key in _OUTPUT_LIMITS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value * generations(endpoint, body)
    return None


def output_tokens(endpoint: str, body: dict[str, Any]) -> int:
    limit = output_limit(endpoint, body)
    return DEFAULT_OUTPUT_TOKENS * generations(endpoint, body) if limit is None else limit


@dataclass
class Estimate:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    #: How input tokens were counted: "tokenizer" (the model's own) or "estimate" (4 characters a token).
    counted_by: str = "estimate"
    models: set[str] = field(default_factory=set)

    @property
    def tokens(self) -> pricing.Tokens:
        return pricing.Tokens(input=self.input_tokens, output=self.output_tokens)

    def add(self, endpoint: str, body: dict[str, Any], count: Counter | None = None) -> int:
        """Count one request in; its input tokens."""
        texts, fixed = input_texts(endpoint, body)
        counter = count or heuristic_count
        tokens = fixed + sum(counter(t) for t in texts)
        self.input_tokens += tokens
        self.output_tokens += output_tokens(endpoint, body)
        self.requests += 1
        model = body.get("model")
        if isinstance(model, str):
            self.models.add(model)
            if self.model is None:
                self.model = model
        return tokens


def estimate_lines(endpoint: str, bodies: Iterable[dict[str, Any]], count: Counter | None = None) -> Estimate:
    est = Estimate(counted_by="tokenizer" if count is not None else "estimate")
    for body in bodies:
        est.add(endpoint, body, count)
    return est
