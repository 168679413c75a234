"""Request layer, out: finished sequences as OpenAI chat/completions response bodies (or error results)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from freight.backends.llama_cpp.interface import CHAT, ModelRunner, SeqOutput, TokenLogprob
from freight.backends.llama_cpp.params import Prepared
from freight.domain.ids import new_request_id
from freight.domain.requests import Result
from freight.wire.jsonx import dumps
from freight.wire.openai import error_envelope
from freight.wire.tools import openai_tool_calls, parse_tool_calls


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def build_response(prep: Prepared, outputs: Sequence[SeqOutput], runner: ModelRunner, model_id: str) -> dict[str, Any]:
    """The OpenAI response body for a finished request."""
    created = int(time.time())
    completion_tokens = sum(len(o.tokens) for o in outputs)
    usage = {
        "prompt_tokens": prep.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prep.prompt_tokens + completion_tokens,
    }
    choices: list[dict[str, Any]] = []
    if prep.endpoint == CHAT:
        for i, o in enumerate(outputs):
            lp = None
            if prep.logprobs and o.logprobs is not None:
                lp = {"content": [_chat_logprob(t, runner) for t in o.logprobs], "refusal": None}
            text = _text(o.text)
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            finish = o.finish_reason
            # A call is read only from an output that ended by itself (the grammar then guarantees it is complete).
            calls = parse_tool_calls(text, prep.tools) if prep.tools is not None and finish == "stop" else None
            if calls is not None:
                message["content"] = None
                message["tool_calls"] = openai_tool_calls(calls)
                finish = "tool_calls"
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": None,
        }
    for i, o in enumerate(outputs):
        text = _text(o.text)
        if prep.echo:
            text = prep.echo[i // prep.n] + text
        lp = _completion_logprobs(o, runner) if prep.logprobs and o.logprobs is not None else None
        choices.append({"text": text, "index": i, "logprobs": lp, "finish_reason": o.finish_reason})
    return {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": None,
    }


def _chat_logprob(t: TokenLogprob, runner: ModelRunner) -> dict[str, Any]:
    piece = runner.piece(t.token)
    return {
        "token": _text(piece),
        "logprob": t.logprob,
        "bytes": list(piece),
        "top_logprobs": [
            {"token": _text(runner.piece(a)), "logprob": lp, "bytes": list(runner.piece(a))} for a, lp in t.top
        ],
    }


def _completion_logprobs(o: SeqOutput, runner: ModelRunner) -> dict[str, Any]:
    lps = o.logprobs or []
    return {
        "tokens": [_text(runner.piece(t.token)) for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [{_text(runner.piece(a)): lp for a, lp in t.top} for t in lps],
        "text_offset": list(o.offsets),
    }


def error_result(status: int, message: str, error_type: str, param: str | None, code: str | None) -> Result:
    return Result(
        status_code=status,
        body=dumps(error_envelope(message, error_type, param, code)),
        request_id=new_request_id(),
    )
