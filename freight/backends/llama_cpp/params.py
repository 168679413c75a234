"""Request layer, in: OpenAI chat/completions bodies validated against what the local model can do, as ``SeqSpec``s.

OpenAI semantics; it needs a ``ModelRunner`` for tokenizing, the chat template and sampler objects, and llama.cpp's
GBNF helpers for ``response_format`` and tool calls (function calling: freight/wire/tools.py, docs/chat-model.md).
"""

from __future__ import annotations

import hashlib
import importlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from freight.backends import openai_params
from freight.backends.llama_cpp.interface import (
    CHAT,
    COMPLETIONS,
    BadRequest,
    ModelRunner,
    SamplingParams,
    SeqSpec,
)
from freight.backends.openai_params import is_int
from freight.wire.jsonx import dumps
from freight.wire.tools import (
    ToolsError,
    ToolSpec,
    call_schema,
    enforce_int_ranges,
    parse_tool_spec,
    wrap_grammar,
)
from freight.wire.tools_prompt import chat_messages

#: Largest number of choices (``n`` times prompts) one request may ask for.
MAX_CHOICES = 128
#: OpenAI's limits.
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETION = 5
#: Default ``max_tokens`` of the legacy completions endpoint (as OpenAI).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick a random one"

_COMMON_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "stream",
        # accepted and ignored
        "user",
        "metadata",
        "store",
        "stream_options",
    }
)
_CHAT_KEYS = _COMMON_KEYS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "modalities",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
_COMPLETION_KEYS = _COMMON_KEYS | {"prompt", "echo", "best_of", "suffix"}
_CHAR_RULE_RE = re.compile(r"^char ::= .*$", re.MULTILINE)
_STRICT_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


@dataclass
class Prepared:
    """A validated request: its sequences (one per choice) and what the response needs."""

    endpoint: str
    specs: list[SeqSpec]
    prompt_tokens: int
    logprobs: bool
    echo: list[str] = field(default_factory=list)  # completions with echo: per prompt
    n: int = 1
    tools: ToolSpec | None = None  # chat with tools: outputs may be tool calls


def schema_gbnf(schema: Any, param: str) -> str:
    """GBNF for a JSON schema: llama-cpp-python's converter, with JSON's rule for string characters, and integer
    ranges of up to 256 values enforced (the converter ignores ``minimum``/``maximum``)."""
    grammar_mod = importlib.import_module("llama_cpp.llama_grammar")
    try:
        gbnf = str(grammar_mod.json_schema_to_gbnf(dumps(enforce_int_ranges(schema)).decode()))
    except Exception as e:
        raise BadRequest(f"unsupported JSON schema: {e}", param, "invalid_value") from e
    # The converter's string characters admit raw control characters, which JSON forbids.
    return _CHAR_RULE_RE.sub(lambda _m: _STRICT_CHAR_RULE, gbnf)


def tool_grammar(spec: ToolSpec) -> str:
    """The grammar of a request whose tool_choice allows calls: forced calls, or (auto) text or calls."""
    try:
        return wrap_grammar(schema_gbnf(call_schema(spec), "tools"), spec)
    except ToolsError as e:
        raise BadRequest(e.message, e.param, e.code) from e


class RequestParser:
    """Validates OpenAI chat/completions bodies against what this backend can do; builds the sequences."""

    def __init__(self, runner: ModelRunner, model_id: str) -> None:
        self.runner = runner
        self.model_id = model_id

    # ---- parameters ---------------------------------------------------------------------------------------------
    @staticmethod
    def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
        return openai_params.number(body, key, default, lo, hi)

    @staticmethod
    def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
        return openai_params.integer(body, key, default, lo, hi)

    def _check_keys(self, body: dict[str, Any], allowed: frozenset[str]) -> None:
        openai_params.check_keys(body, allowed, f"the local model '{self.model_id}'")

    def _stops(self, body: dict[str, Any]) -> tuple[bytes, ...]:
        return tuple(s.encode("utf-8") for s in openai_params.stops(body))

    def _logit_bias(self, body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
        return tuple(openai_params.logit_bias(body, self.runner.n_vocab))

    @staticmethod
    def _grammar(body: dict[str, Any]) -> str | None:
        rf = body.get("response_format")
        if rf is None:
            return None
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise BadRequest("'response_format' must be an object with a 'type'", "response_format", "invalid_type")
        kind = rf["type"]
        grammar_mod = importlib.import_module("llama_cpp.llama_grammar")
        if kind == "text":
            return None
        if kind == "json_object":
            return str(grammar_mod.JSON_GBNF)
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise BadRequest(
                    "'response_format.json_schema.schema' must be a JSON schema object",
                    "response_format.json_schema.schema",
                    "invalid_value",
                )
            return schema_gbnf(schema, "response_format.json_schema.schema")
        raise BadRequest(f"unsupported response_format type '{kind}'", "response_format.type", "invalid_value")

    def _choice_seed(self, seed: int | None, i: int) -> int:
        if seed is None:
            s = secrets.randbits(32)
        else:
            h = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest()
            s = int.from_bytes(h, "little")
        return s if s != LLAMA_DEFAULT_SEED else 0

    def _sampling(self, body: dict[str, Any], *, grammar: str | None) -> tuple[dict[str, Any], int | None]:
        seed = body.get("seed")
        if seed is not None and not is_int(seed):
            raise BadRequest("'seed' must be an integer", "seed", "invalid_type")
        kw: dict[str, Any] = {
            "temperature": self._number(body, "temperature", 1.0, 0.0, 2.0),
            "top_p": self._number(body, "top_p", 1.0, 0.0, 1.0),
            "top_k": self._integer(body, "top_k", 0, 0, self.runner.n_vocab),
            "presence_penalty": self._number(body, "presence_penalty", 0.0, -2.0, 2.0),
            "frequency_penalty": self._number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            "logit_bias": self._logit_bias(body),
            "grammar": grammar,
        }
        return kw, seed

    def _limits(self, body: dict[str, Any], prompt_len: int, default: int | None, param: str, key: str) -> int:
        return openai_params.max_tokens(body, prompt_len, default, param, key, self.runner.slot_ctx)

    def _make_specs(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: list[int],
        stops: tuple[bytes, ...],
        logprobs: int | None,
        kw: dict[str, Any],
        seed: int | None,
    ) -> list[SeqSpec]:
        specs: list[SeqSpec] = []
        try:
            for p, prompt in enumerate(prompts):
                for j in range(n):
                    params = SamplingParams(seed=self._choice_seed(seed, p * n + j), **kw)
                    key = None
                    if seed is not None:  # everything the sequence's output depends on
                        what = repr((prompt, max_tokens[p], stops, logprobs, params)).encode()
                        key = hashlib.blake2b(what, digest_size=16).digest()
                    sampler = self.runner.make_sampler(params)
                    specs.append(SeqSpec(prompt, max_tokens[p], sampler, stops, logprobs, key))
        except BaseException:
            for s in specs:
                self.runner.free_sampler(s.sampler)
            raise
        return specs

    # ---- chat ---------------------------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any]) -> Prepared:
        self._check_keys(body, _CHAT_KEYS)
        try:
            tools = parse_tool_spec(body)
            messages = chat_messages(body.get("messages"), tools)
        except ToolsError as e:
            raise BadRequest(e.message, e.param, e.code) from e
        n = self._integer(body, "n", 1, 1, MAX_CHOICES) or 1
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise BadRequest("'logprobs' must be a boolean", "logprobs", "invalid_type")
        top = self._integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not logprobs:
            raise BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value")
        stops = self._stops(body)
        grammar = self._grammar(body)
        if tools is not None and tools.calls_allowed:
            if grammar is not None:
                raise BadRequest(
                    "'response_format' together with 'tools' is not supported by the local model (unless "
                    "'tool_choice' is 'none')",
                    "response_format",
                    "unsupported_value",
                )
            grammar = tool_grammar(tools)
        kw, seed = self._sampling(body, grammar=grammar)
        prompt = self.runner.chat_prompt(messages)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = self._limits(body, len(prompt), None, "messages", key)
        specs = self._make_specs([prompt], n, [max_tokens], stops, (top or 0) if logprobs else None, kw, seed)
        return Prepared(CHAT, specs, len(prompt), bool(logprobs), n=n, tools=tools)

    # ---- completions --------------------------------------------------------------------------------------------
    def _prompts(self, body: dict[str, Any]) -> tuple[list[list[int]], list[str]]:
        texts, token_lists = openai_params.prompt_tokens(body, self.runner.n_vocab)
        if token_lists is not None:
            echo = [
                b"".join(self.runner.piece(t) for t in toks).decode("utf-8", errors="replace") for toks in token_lists
            ]
            return token_lists, echo
        assert texts is not None
        return [self.runner.tokenize(t, add_special=True, parse_special=False) for t in texts], texts

    def parse_completion(self, body: dict[str, Any]) -> Prepared:
        self._check_keys(body, _COMPLETION_KEYS)
        if body.get("suffix"):
            raise BadRequest("'suffix' is not supported by the local model", "suffix", "unsupported_parameter")
        prompts, texts = self._prompts(body)
        n = self._integer(body, "n", 1, 1, MAX_CHOICES) or 1
        best_of = self._integer(body, "best_of", None, 1, MAX_CHOICES)
        if best_of is not None and best_of != n:
            raise BadRequest("'best_of' other than 'n' is not supported", "best_of", "unsupported_value")
        if n * len(prompts) > MAX_CHOICES:
            raise BadRequest(f"at most {MAX_CHOICES} choices (n times prompts) per request", "n", "invalid_value")
        logprobs = self._integer(body, "logprobs", None, 0, MAX_LOGPROBS_COMPLETION)
        echo = body.get("echo")
        if echo is not None and not isinstance(echo, bool):
            raise BadRequest("'echo' must be a boolean", "echo", "invalid_type")
        if echo and logprobs is not None:
            raise BadRequest("'echo' together with 'logprobs' is not supported", "echo", "unsupported_value")
        stops = self._stops(body)
        kw, seed = self._sampling(body, grammar=None)
        max_tokens = [
            self._limits(body, len(p), COMPLETIONS_DEFAULT_MAX_TOKENS, "prompt", "max_tokens") for p in prompts
        ]
        specs = self._make_specs(prompts, n, max_tokens, stops, logprobs, kw, seed)
        return Prepared(
            COMPLETIONS,
            specs,
            sum(len(p) for p in prompts),
            logprobs is not None,
            echo=texts if echo else [],
            n=n,
        )

    def parse(self, endpoint: str, body: Any) -> Prepared:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if endpoint == CHAT:
            return self.parse_chat(body)
        if endpoint == COMPLETIONS:
            return self.parse_completion(body)
        raise BadRequest(f"endpoint {endpoint} is not served by the local model", None, "unsupported_endpoint")
