"""Request layer, out: vLLM's finished outputs as OpenAI chat/completions/embeddings response bodies.

Reads vLLM's output objects by their attributes only (``RequestOutput.outputs``, ``CompletionOutput.text`` /
``token_ids`` / ``finish_reason`` / ``logprobs``, ``Logprob.logprob`` / ``rank`` / ``decoded_token``), described
by the protocols below, so that it is pure and tested on machines without vLLM.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from freight.backends.llama_cpp.interface import CHAT
from freight.backends.vllm.translate import EmbeddingPlan, GenerationPlan
from freight.wire.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, openai_tool_calls, parse_tool_calls


class LogprobLike(Protocol):
    """vLLM's ``vllm.logprobs.Logprob`` (``vllm.sequence.Logprob`` before 0.10)."""

    @property
    def logprob(self) -> float: ...
    @property
    def rank(self) -> int | None: ...
    @property
    def decoded_token(self) -> str | None: ...


class CompletionOutputLike(Protocol):
    """vLLM's ``vllm.outputs.CompletionOutput``: one choice."""

    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def logprobs(self) -> Sequence[Mapping[int, LogprobLike]] | None: ...


class RequestOutputLike(Protocol):
    """vLLM's ``vllm.outputs.RequestOutput``: one prompt's choices."""

    @property
    def outputs(self) -> Sequence[CompletionOutputLike]: ...


#: Turns a token id into its text, for logprob entries vLLM left undecoded.
Decode = Callable[[int], str]


def finish_reason(raw: str | None) -> str:
    """OpenAI's ``finish_reason`` for vLLM's (``"stop"``, ``"length"``; ``"abort"`` never reaches a response)."""
    return "length" if raw == "length" else "stop"


def _token_text(token: int, entry: LogprobLike | None, decode: Decode) -> str:
    if entry is not None and entry.decoded_token is not None:
        return entry.decoded_token
    return decode(token)


def _top(step: Mapping[int, LogprobLike], k: int) -> list[tuple[int, LogprobLike]]:
    """The ``k`` most likely tokens of one step (vLLM adds the sampled token when it is not among them)."""
    ranked = sorted(step.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30,
                                                  -kv[1].logprob))
    return ranked[:k]


def _chat_logprobs(o: CompletionOutputLike, k: int, decode: Decode) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for token, step in zip(o.token_ids, o.logprobs or (), strict=False):
        entry = step.get(token)
        text = _token_text(token, entry, decode)
        content.append({
            "token": text,
            "logprob": entry.logprob if entry is not None else -9999.0,
            "bytes": list(text.encode("utf-8")),
            "top_logprobs": [
                {"token": (t := _token_text(tok, e, decode)), "logprob": e.logprob, "bytes": list(t.encode("utf-8"))}
                for tok, e in _top(step, k)
            ],
        })
    return content


def _completion_logprobs(o: CompletionOutputLike, k: int, decode: Decode) -> dict[str, Any]:
    tokens: list[str] = []
    token_logprobs: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for token, step in zip(o.token_ids, o.logprobs or (), strict=False):
        entry = step.get(token)
        text = _token_text(token, entry, decode)
        tokens.append(text)
        token_logprobs.append(entry.logprob if entry is not None else -9999.0)
        tops.append({_token_text(tok, e, decode): e.logprob for tok, e in _top(step, k)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def _tool_calls(plan: GenerationPlan, text: str) -> list[dict[str, Any]] | None:
    """The calls of an output that ended by itself: forced outputs are the bare JSON array of calls (vLLM's
    structured output holds them to ``call_schema``); with ``auto`` the model writes them in ``<tool_call>`` tags,
    as it is told (freight/wire/tools_prompt.py), unconstrained: anything else stays text."""
    if plan.tools is None:
        return None
    wrapped = f"{TOOL_CALL_OPEN}{text}{TOOL_CALL_CLOSE}" if plan.forced_tools else text.strip()
    calls = parse_tool_calls(wrapped, plan.tools)
    return openai_tool_calls(calls) if calls is not None else None


def _choices(plan: GenerationPlan, outputs: Sequence[RequestOutputLike]) -> list[CompletionOutputLike]:
    """Every choice, prompt by prompt, each prompt's in vLLM's index order."""
    return [o for out in outputs for o in sorted(out.outputs, key=lambda c: c.index)]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def build_generation(plan: GenerationPlan, outputs: Sequence[RequestOutputLike], model_id: str,
                     decode: Decode) -> dict[str, Any]:
    """The OpenAI body of a finished chat or completions request (``outputs``: one per ``plan.requests``)."""
    choices_out = _choices(plan, outputs)
    completion_tokens = sum(len(o.token_ids) for o in choices_out)
    created = int(time.time())
    choices: list[dict[str, Any]] = []
    if plan.endpoint == CHAT:
        for i, o in enumerate(choices_out):
            finish = finish_reason(o.finish_reason)
            message: dict[str, Any] = {"role": "assistant", "content": o.text, "refusal": None, "annotations": []}
            calls = _tool_calls(plan, o.text) if finish == "stop" else None
            if calls is not None:
                message["content"] = None
                message["tool_calls"] = calls
                finish = "tool_calls"
            lp = None
            if plan.logprobs and o.logprobs is not None:
                lp = {"content": _chat_logprobs(o, plan.top_logprobs, decode), "refusal": None}
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
        return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": created,
                "model": model_id, "choices": choices, "usage": usage(plan.prompt_tokens, completion_tokens),
                "system_fingerprint": None}
    for i, o in enumerate(choices_out):
        text = plan.echo[i // plan.n] + o.text if plan.echo else o.text
        lp = _completion_logprobs(o, plan.top_logprobs, decode) if plan.logprobs and o.logprobs is not None else None
        choices.append({"text": text, "index": i, "logprobs": lp, "finish_reason": finish_reason(o.finish_reason)})
    return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": created,
            "model": model_id, "choices": choices, "usage": usage(plan.prompt_tokens, completion_tokens),
            "system_fingerprint": None}


def embedding_vector(output: Any) -> list[float]:
    """The vector of one of vLLM's pooling outputs: ``EmbeddingRequestOutput.outputs.embedding`` (a list), or
    ``PoolingRequestOutput.outputs.data`` (a tensor)."""
    inner = getattr(output, "outputs", output)
    vector = getattr(inner, "embedding", None)
    if vector is None:
        vector = inner.data
    if hasattr(vector, "tolist"):
        vector = vector.tolist()
    return [float(x) for x in vector]


def _b64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def build_embeddings(plan: EmbeddingPlan, vectors: Sequence[Sequence[float]], model_id: str) -> dict[str, Any]:
    """The OpenAI body of a finished embeddings request (``vectors``: one per input)."""
    data: list[dict[str, Any]] = []
    for i, vector in enumerate(vectors):
        values = list(vector)  # ``dimensions`` is vLLM's to apply (PoolingParams): it truncates and renormalises
        data.append({"object": "embedding", "index": i, "embedding": _b64(values) if plan.base64 else values})
    return {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens}}
