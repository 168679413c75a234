"""OpenAI request parameters as the engines freight runs itself read them (llama.cpp: llama_cpp/params.py;
vLLM: vllm/translate.py): one definition of each check and of each 400 it gives, whatever the engine."""

from __future__ import annotations

import math
from typing import Any

from freight.backends.llama_cpp.interface import BadRequest

MAX_STOP = 4


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not is_num(v) or not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be a number between {lo:g} and {hi:g}", key, "invalid_value")
    return float(v)


def integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if not is_int(v) or not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be an integer between {lo} and {hi}", key, "invalid_value")
    return int(v)


def check_keys(body: dict[str, Any], allowed: frozenset[str], model: str) -> None:
    """Every key set (not null) is one the engine takes; ``model`` names it in the 400 ("the model 'x'")."""
    for key, value in body.items():
        if value is not None and key not in allowed:
            raise BadRequest(f"Unsupported parameter: '{key}' is not supported by {model}.", key,
                             "unsupported_parameter")
    if body.get("stream"):
        raise BadRequest("'stream' is not supported in a batch", "stream", "unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise BadRequest("only the 'text' modality is supported", "modalities", "unsupported_value")


def stops(body: dict[str, Any]) -> list[str]:
    """``stop``: the distinct non-empty strings, in order."""
    stop = body.get("stop")
    if stop is None:
        return []
    given = [stop] if isinstance(stop, str) else stop
    if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise BadRequest("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(given) > MAX_STOP:
        raise BadRequest(f"'stop' may hold at most {MAX_STOP} sequences", "stop", "invalid_value")
    return list(dict.fromkeys(s for s in given if s))


def logit_bias(body: dict[str, Any], n_vocab: int) -> list[tuple[int, float]]:
    lb = body.get("logit_bias")
    if lb is None:
        return []
    if not isinstance(lb, dict):
        raise BadRequest("'logit_bias' must be an object mapping token ids to biases", "logit_bias", "invalid_type")
    out: list[tuple[int, float]] = []
    for k, v in lb.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise BadRequest(f"invalid token id {k!r} in 'logit_bias'", "logit_bias", "invalid_value") from None
        if not 0 <= tok < n_vocab or not is_num(v) or not -100 <= v <= 100:
            raise BadRequest(f"invalid 'logit_bias' entry {k!r}: {v!r}", "logit_bias", "invalid_value")
        out.append((tok, float(v)))
    return out


def max_tokens(body: dict[str, Any], prompt_len: int, default: int | None, param: str, key: str,
               context: int) -> int:
    """The completion's token budget (``key``: max_tokens or max_completion_tokens) within ``context``
    tokens of prompt and completion; the 400s OpenAI gives for an empty or too long prompt."""
    wanted_max = integer(body, key, None, 1, (1 << 31) - 1)
    if prompt_len == 0:
        raise BadRequest("the prompt is empty", param, "invalid_value")
    wanted = wanted_max if wanted_max is not None else (default or 0)
    if prompt_len >= context or prompt_len + wanted > context:
        raise BadRequest(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + max(wanted, 1)} tokens ({prompt_len} in the {param}, {max(wanted, 1)} in the "
            "completion). Please reduce the length of the prompt or completion.",
            param, "context_length_exceeded")
    if wanted_max is None:
        return default if default is not None else context - prompt_len
    return wanted_max


def prompt_tokens(body: dict[str, Any], n_vocab: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """``prompt`` of a completions body: its strings, or else its token id lists (checked against the
    vocabulary); exactly one of the two is not None."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p], None
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        return list(p), None
    if isinstance(p, list) and p and all(is_int(x) for x in p):
        token_lists = [list(p)]
    elif isinstance(p, list) and p and all(isinstance(x, list) and x and all(is_int(t) for t in x) for x in p):
        token_lists = [list(x) for x in p]
    else:
        raise BadRequest("'prompt' must be a string, an array of strings, or an array (of arrays) of token ids",
                         "prompt", "invalid_value")
    for toks in token_lists:
        if not all(0 <= t < n_vocab for t in toks):
            raise BadRequest("'prompt' holds a token id outside the vocabulary", "prompt", "invalid_value")
    return None, token_lists
