"""What the simulator answers: its tokenizer, deterministic response bodies with real-looking ``usage``,
the 400s of invalid requests, and the rate-limit buckets (as a provider quantizes them)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct
from collections.abc import Iterator
from typing import Any

from freight.testing.upstream.config import UpstreamConfig

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)

#: Every ``created`` timestamp (bodies are a function of the request only).
CREATED = 1_700_000_000

_WORDS = (
    "the of and to in is was for on that with as by at from his her an are this which be or had not but "
    "river mill market bread cheese apple wool winter square wheel stone light water field road house"
).split()
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def count_text_tokens(text: str) -> int:
    """The simulator's tokenizer: words and punctuation marks (close to BPE counts for English)."""
    return len(_TOKEN_RE.findall(text))


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key not in ("type", "role", "detail"):
                yield from _strings(value)


def _input_tokens(value: Any) -> list[int]:
    """Token counts of each input of a prompt/input field (a string, strings, token ids or lists of them)."""
    if isinstance(value, str):
        return [count_text_tokens(value)]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [len(value)]
        out: list[int] = []
        for item in value:
            if isinstance(item, str):
                out.append(count_text_tokens(item))
            elif isinstance(item, list):
                out.append(len(item))
        return out
    return []


def count_prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """Prompt tokens as this upstream counts them (and reports in ``usage``)."""
    if endpoint == CHAT:
        total = 3
        for message in body.get("messages") or []:
            total += 3 + sum(count_text_tokens(s) for s in _strings(message))
        if body.get("tools"):
            total += sum(count_text_tokens(s) for s in _strings(body["tools"]))
        return total
    if endpoint == COMPLETIONS:
        return sum(_input_tokens(body.get("prompt")))
    if endpoint == EMBEDDINGS:
        return sum(_input_tokens(body.get("input")))
    if endpoint == RESPONSES:
        total = sum(count_text_tokens(s) for s in _strings(body.get("input")))
        if isinstance(body.get("instructions"), str):
            total += count_text_tokens(body["instructions"])
        return total + 3
    return 0


def _digest(body: dict[str, Any]) -> bytes:
    canonical = json.dumps({k: v for k, v in body.items() if k != "model"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def request_key(body: dict[str, Any]) -> str:
    user = body.get("user")
    if isinstance(user, str) and user:
        return user
    return _digest(body).hex()[:16]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def completion_tokens(endpoint: str, body: dict[str, Any], choice: int, default_max: int) -> tuple[int, bool]:
    """(tokens, hit the cap) of one choice: between a fifth of the cap and the cap, from the body's hash."""
    if endpoint == CHAT:
        cap = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens")) or default_max
    elif endpoint == COMPLETIONS:
        cap = _int(body.get("max_tokens")) or 16
    else:
        cap = _int(body.get("max_output_tokens")) or default_max
    low = max(1, cap // 5)
    h = int.from_bytes(hashlib.sha256(_digest(body) + bytes([choice % 256])).digest()[:8], "big")
    n = low + h % (cap - low + 1)
    return n, n == cap


def _text(seed: bytes, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _choices_count(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def _embedding(text_key: str, dim: int, seed: int) -> list[float]:
    rng = random.Random(hashlib.sha256(f"{seed}:{text_key}".encode()).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def build_response(endpoint: str, body: dict[str, Any], config: UpstreamConfig) -> tuple[dict[str, Any], int]:
    """(response body, total tokens) for a valid request."""
    model = str(body.get("model"))
    digest = _digest(body)
    rid = digest.hex()[:24]
    prompt = count_prompt_tokens(endpoint, body)
    if endpoint == EMBEDDINGS:
        raw = body.get("input")
        inputs = raw if isinstance(raw, list) and not all(isinstance(v, int) for v in raw) else [raw]
        dim = _int(body.get("dimensions")) or config.embedding_dim
        data = []
        for i, item in enumerate(inputs):
            vec = _embedding(json.dumps(item), dim, config.seed)
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": data, "model": model, "usage": usage}, prompt

    if endpoint == COMPLETIONS:
        prompts = body.get("prompt")
        count = len(prompts) if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int) else 1
        choices = []
        out = 0
        for i in range(count * _choices_count(body)):
            n, capped = completion_tokens(endpoint, body, i, config.default_max_tokens)
            out += n
            choices.append({"text": _text(digest + bytes([i % 256]), n), "index": i, "logprobs": None,
                            "finish_reason": "length" if capped else "stop"})
        usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        return {"id": f"cmpl-{rid}", "object": "text_completion", "created": CREATED, "model": model,
                "choices": choices, "usage": usage, "system_fingerprint": "fp_freight_sim"}, prompt + out

    if endpoint == RESPONSES:
        n, capped = completion_tokens(endpoint, body, 0, config.default_max_tokens)
        text = _text(digest, n)
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + n}
        return {
            "id": f"resp_{rid}", "object": "response", "created_at": CREATED, "model": model,
            "status": "incomplete" if capped else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
            "error": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "parallel_tool_calls": True,
            "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "output": [{"type": "message", "id": f"msg_{rid}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": usage,
        }, prompt + n

    choices = []
    out = 0
    for i in range(_choices_count(body)):
        n, capped = completion_tokens(endpoint, body, i, config.default_max_tokens)
        out += n
        choices.append({"index": i, "message": {"role": "assistant", "content": _text(digest + bytes([i % 256]), n),
                                                "refusal": None},
                        "logprobs": None, "finish_reason": "length" if capped else "stop"})
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
             "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": "fp_freight_sim"}, prompt + out


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validate(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """An OpenAI error body for a request this upstream refuses with 400, else None."""
    if "reject" in body:
        return error_body("Unrecognized request argument supplied: reject", "invalid_request_error", "reject")
    if not isinstance(body.get("model"), str):
        return error_body("you must provide a model parameter", "invalid_request_error", "model")
    if body.get("stream"):
        return error_body("this upstream does not stream", "invalid_request_error", "stream")
    field_name = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input", RESPONSES: "input"}[endpoint]
    value = body.get(field_name)
    if endpoint == CHAT:
        ok = isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
    else:
        ok = isinstance(value, str) or (isinstance(value, list) and bool(value))
    if not ok:
        return error_body(f"Missing or invalid '{field_name}'.", "invalid_request_error", field_name)
    return None



class Bucket:
    def __init__(self, per_minute: float, burst_s: float, now: float):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def shortfall_s(self, cost: float) -> float:
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 1e-9 else need / self.rate

    def reset_s(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


def format_duration(seconds: float) -> str:
    """Go-style, as OpenAI's ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes >= 1 else text
