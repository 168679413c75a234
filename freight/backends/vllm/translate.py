"""Request layer, in: OpenAI chat/completions/embeddings bodies as what vLLM's engine takes, in plain values.

Nothing here imports vLLM: a body becomes an ``EngineRequest`` per prompt, holding the prompt's token ids, the
keyword arguments of ``vllm.SamplingParams`` and, for JSON output and forced tool calls, a ``Guided`` constraint
(vLLM's structured outputs). ``freight.backends.vllm.engine`` turns those into vLLM's objects. The parameters
accepted are exactly those of the llama.cpp lane (freight/backends/llama_cpp/params.py), with the same limits and
the same 400s; a refused body never affects the other bodies of its chunk (``plan_all``).

The chat template is the model's own, applied through its tokenizer (``TextModel.chat``); prompts are tokenized
here, so that an over-long request is refused on its own (400 ``context_length_exceeded``) instead of failing the
engine's batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from freight.backends import openai_params
from freight.backends.llama_cpp.interface import CHAT, COMPLETIONS, BadRequest
from freight.backends.llama_cpp.params import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    MAX_CHOICES,
    MAX_LOGPROBS_COMPLETION,
    MAX_TOP_LOGPROBS_CHAT,
)
from freight.backends.openai_params import is_int
from freight.domain.ids import new_request_id
from freight.domain.requests import Result
from freight.wire.jsonx import dumps
from freight.wire.openai import error_envelope
from freight.wire.tools import ToolsError, ToolSpec, call_schema, enforce_int_ranges, parse_tool_spec
from freight.wire.tools_prompt import chat_messages

log = logging.getLogger(__name__)

EMBEDDINGS = "/v1/embeddings"
#: OpenAI's limit on the number of inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
#: vLLM hands the seed to torch's generator; OpenAI allows any integer, so it is reduced to 63 bits.
SEED_MASK = (1 << 63) - 1

_COMMON_KEYS = frozenset({
    "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "stream",
    "user", "metadata", "store", "stream_options",  # accepted and ignored
})
CHAT_KEYS = _COMMON_KEYS | {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "modalities", "tools", "tool_choice",
    "parallel_tool_calls",
}
COMPLETION_KEYS = _COMMON_KEYS | {"prompt", "echo", "best_of", "suffix"}
EMBEDDING_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
ENCODING_FORMATS = ("float", "base64")


class TextModel(Protocol):
    """What the request layer needs from the model: its limits and its tokenizer (see ``HFTextModel``)."""

    max_model_len: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt (with the tokenizer's special tokens, e.g. BOS)."""
        ...

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the model's chat template applied to ``messages``, ending with the assistant's turn."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Guided:
    """A structured-output constraint: a JSON schema (``json``) or any JSON object (``json_object``)."""

    json: dict[str, Any] | None = None
    json_object: bool = False

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vLLM's ``StructuredOutputsParams`` (``GuidedDecodingParams`` before 0.11)."""
        return {"json": self.json} if self.json is not None else {"json_object": True}


@dataclass
class EngineRequest:
    """One vLLM request: one prompt, ``sampling["n"]`` choices."""

    prompt_token_ids: list[int]
    #: Keyword arguments of ``vllm.SamplingParams`` (plain values; ``Guided`` is separate).
    sampling: dict[str, Any]
    guided: Guided | None = None


@dataclass
class GenerationPlan:
    """A validated chat or completions request and what its response needs."""

    endpoint: str
    requests: list[EngineRequest]
    prompt_tokens: int
    n: int = 1
    #: Chat: ``logprobs`` was true; completions: ``logprobs`` was given.
    logprobs: bool = False
    top_logprobs: int = 0
    echo: list[str] = field(default_factory=list)  # completions with echo: the text of each prompt
    tools: ToolSpec | None = None
    #: The output is constrained to the JSON array of calls (``tool_choice`` required or a named function).
    forced_tools: bool = False


@dataclass
class EmbeddingPlan:
    """A validated embeddings request: its inputs as token ids."""

    inputs: list[list[int]]
    base64: bool
    dimensions: int | None
    prompt_tokens: int


Plan = GenerationPlan | EmbeddingPlan


def refusal(e: BadRequest) -> Result:
    """The 400 of one refused request, in OpenAI's error envelope."""
    return Result(status_code=400, body=dumps(error_envelope(e.message, "invalid_request_error", e.param, e.code)),
                  request_id=new_request_id())


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    return openai_params.number(body, key, default, lo, hi)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    return openai_params.integer(body, key, None, lo, hi)


class Translator:
    """Validates OpenAI bodies against what the model can do and builds its vLLM requests."""

    def __init__(self, model: TextModel, model_id: str, endpoints: frozenset[str]) -> None:
        self.model = model
        self.model_id = model_id
        self.endpoints = endpoints

    def plan_all(self, endpoint: str, bodies: Sequence[Any]) -> list[Plan | Result]:
        """One plan per body, or that body's own 400 (an unexpected error there is that body's 500)."""
        out: list[Plan | Result] = []
        for body in bodies:
            try:
                out.append(self.plan(endpoint, body))
            except BadRequest as e:
                out.append(refusal(e))
            except Exception as e:  # a tokenizer or template failing on one body: that body's 500, not the chunk's
                log.exception("vllm backend: could not prepare a request")
                out.append(Result(status_code=500, request_id=new_request_id(), body=dumps(
                    error_envelope(f"could not prepare the request: {e!r}", "server_error", None, None))))
        return out

    def plan(self, endpoint: str, body: Any) -> Plan:
        if endpoint not in self.endpoints:
            raise BadRequest(f"endpoint {endpoint} is not served by the model '{self.model_id}'", None,
                             "unsupported_endpoint")
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if endpoint == CHAT:
            return self.plan_chat(body)
        if endpoint == COMPLETIONS:
            return self.plan_completion(body)
        return self.plan_embedding(body)

    # ---- shared ---------------------------------------------------------------------------------------------------
    def _check_keys(self, body: dict[str, Any], allowed: frozenset[str]) -> None:
        openai_params.check_keys(body, allowed, f"the model '{self.model_id}'")

    @staticmethod
    def _stops(body: dict[str, Any]) -> list[str]:
        return openai_params.stops(body)

    def _logit_bias(self, body: dict[str, Any]) -> dict[int, float]:
        return dict(openai_params.logit_bias(body, self.model.vocab_size))

    def _sampling(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        """``SamplingParams`` keywords every endpoint shares (``max_tokens`` and ``logprobs`` are added later)."""
        seed = body.get("seed")
        if seed is not None and not is_int(seed):
            raise BadRequest("'seed' must be an integer", "seed", "invalid_type")
        top_k = _integer(body, "top_k", 0, self.model.vocab_size) or -1  # 0 (OpenAI-style "off") is vLLM's -1
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:  # only the most likely token; vLLM wants top_p in (0, 1]
            top_p, top_k = 1.0, 1
        kw: dict[str, Any] = {
            "n": n,
            "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
            "top_p": top_p,
            "top_k": top_k,
            "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
            "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        }
        if seed is not None:
            kw["seed"] = seed & SEED_MASK
        stops = self._stops(body)
        if stops:
            kw["stop"] = stops
        bias = self._logit_bias(body)
        if bias:
            kw["logit_bias"] = bias
        return kw

    def _max_tokens(self, body: dict[str, Any], prompt_len: int, default: int | None, param: str, key: str) -> int:
        return openai_params.max_tokens(body, prompt_len, default, param, key, self.model.max_model_len)

    @staticmethod
    def _guided(body: dict[str, Any]) -> Guided | None:
        rf = body.get("response_format")
        if rf is None:
            return None
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise BadRequest("'response_format' must be an object with a 'type'", "response_format", "invalid_type")
        kind = rf["type"]
        if kind == "text":
            return None
        if kind == "json_object":
            return Guided(json_object=True)
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise BadRequest("'response_format.json_schema.schema' must be a JSON schema object",
                                 "response_format.json_schema.schema", "invalid_value")
            return Guided(json=enforce_int_ranges(schema))
        raise BadRequest(f"unsupported response_format type '{kind}'", "response_format.type", "invalid_value")

    def plan_chat(self, body: dict[str, Any]) -> GenerationPlan:
        self._check_keys(body, CHAT_KEYS)
        try:
            tools = parse_tool_spec(body)
            messages = chat_messages(body.get("messages"), tools)
        except ToolsError as e:
            raise BadRequest(e.message, e.param, e.code) from e
        n = _integer(body, "n", 1, MAX_CHOICES) or 1
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise BadRequest("'logprobs' must be a boolean", "logprobs", "invalid_type")
        top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not logprobs:
            raise BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value")
        guided = self._guided(body)
        forced = False
        if tools is not None and tools.calls_allowed:
            if guided is not None:
                raise BadRequest("'response_format' together with 'tools' is not supported by the local model "
                                 "(unless 'tool_choice' is 'none')", "response_format", "unsupported_value")
            if tools.choice == "required":  # vLLM's own way: the output is held to the JSON array of calls
                try:
                    guided, forced = Guided(json=enforce_int_ranges(call_schema(tools))), True
                except ToolsError as e:
                    raise BadRequest(e.message, e.param, e.code) from e
        kw = self._sampling(body, n)
        prompt = self.model.chat(messages)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        kw["max_tokens"] = self._max_tokens(body, len(prompt), None, "messages", key)
        if logprobs:
            kw["logprobs"] = top or 0
        return GenerationPlan(CHAT, [EngineRequest(prompt, kw, guided)], len(prompt), n, bool(logprobs), top or 0,
                              tools=tools, forced_tools=forced)

    # ---- completions ----------------------------------------------------------------------------------------------
    def _prompts(self, body: dict[str, Any]) -> tuple[list[list[int]], list[str]]:
        texts, token_lists = openai_params.prompt_tokens(body, self.model.vocab_size)
        if token_lists is None:
            assert texts is not None
            return [self.model.encode(x) for x in texts], texts
        return token_lists, [self.model.decode(t) for t in token_lists]

    def plan_completion(self, body: dict[str, Any]) -> GenerationPlan:
        self._check_keys(body, COMPLETION_KEYS)
        if body.get("suffix"):
            raise BadRequest("'suffix' is not supported by the local model", "suffix", "unsupported_parameter")
        prompts, texts = self._prompts(body)
        n = _integer(body, "n", 1, MAX_CHOICES) or 1
        best_of = _integer(body, "best_of", 1, MAX_CHOICES)
        if best_of is not None and best_of != n:
            raise BadRequest("'best_of' other than 'n' is not supported", "best_of", "unsupported_value")
        if n * len(prompts) > MAX_CHOICES:
            raise BadRequest(f"at most {MAX_CHOICES} choices (n times prompts) per request", "n", "invalid_value")
        logprobs = _integer(body, "logprobs", 0, MAX_LOGPROBS_COMPLETION)
        echo = body.get("echo")
        if echo is not None and not isinstance(echo, bool):
            raise BadRequest("'echo' must be a boolean", "echo", "invalid_type")
        if echo and logprobs is not None:
            raise BadRequest("'echo' together with 'logprobs' is not supported", "echo", "unsupported_value")
        kw = self._sampling(body, n)
        if logprobs is not None:
            kw["logprobs"] = logprobs
        requests = [
            EngineRequest(p, {**kw, "max_tokens": self._max_tokens(body, len(p), COMPLETIONS_DEFAULT_MAX_TOKENS,
                                                                   "prompt", "max_tokens")})
            for p in prompts
        ]
        return GenerationPlan(COMPLETIONS, requests, sum(len(p) for p in prompts), n, logprobs is not None,
                              logprobs or 0, echo=texts if echo else [])

    # ---- embeddings -----------------------------------------------------------------------------------------------
    def plan_embedding(self, body: dict[str, Any]) -> EmbeddingPlan:
        for key, value in body.items():
            if value is not None and key not in EMBEDDING_KEYS:
                raise BadRequest(f"Unsupported parameter: '{key}' is not supported by the model '{self.model_id}'.",
                                 key, "unsupported_parameter")
        encoding_format = body.get("encoding_format")
        if encoding_format is not None and encoding_format not in ENCODING_FORMATS:
            raise BadRequest(f"Invalid value for 'encoding_format': {encoding_format!r}. Supported values are: "
                             "'float' and 'base64'.", "encoding_format", "invalid_value")
        dimensions = _integer(body, "dimensions", 1, 1 << 16)
        raw = body.get("input")
        if raw is None:
            raise BadRequest("You must provide an input parameter.", "input", "missing_required_parameter")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            # Token arrays are refused: their ids would be OpenAI's tokenizer's, not this model's.
            raise BadRequest("'input' must be a non-empty string or a non-empty array of strings", "input",
                             "invalid_value")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise BadRequest(f"'input' has {len(texts)} items; at most {MAX_EMBEDDING_INPUTS} inputs are allowed "
                             "per request.", "input", "invalid_value")
        inputs: list[list[int]] = []
        for i, text in enumerate(texts):
            if not text:
                raise BadRequest(f"'input[{i}]' cannot be an empty string.", "input", "invalid_value")
            ids = self.model.encode(text)
            if len(ids) > self.model.max_model_len:
                raise BadRequest(f"This model's maximum context length is {self.model.max_model_len} tokens, "
                                 f"however 'input[{i}]' has {len(ids)} tokens.", "input", "context_length_exceeded")
            inputs.append(ids)
        return EmbeddingPlan(inputs, encoding_format == "base64", dimensions, sum(len(x) for x in inputs))
