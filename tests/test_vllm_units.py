"""The vLLM backend's pure parts, on CPU (freight/backends/vllm/): request translation, response building, tool
calls, and the clear error on a machine without vLLM. vLLM itself is not installed here and nothing pretends to
run it: the output objects below are plain dataclasses with vLLM's field names (``RequestOutput``,
``CompletionOutput``, ``Logprob``). The engine runs only on a GPU machine (bench/bench_vllm.py, docs/vllm.md).

The tokenizer is a real one (all-MiniLM-L6-v2's WordPiece, shipped in a package) behind the ``TextModel``
protocol, with a ChatML template written here: the translation needs token counts and a chat template, not a
particular model's.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from freight.backends import build_backends
from freight.backends.embedding_text import load_tokenizer
from freight.backends.llama_cpp import params as llama_params
from freight.backends.vllm import (
    EMBEDDINGS,
    EmbeddingPlan,
    GenerationPlan,
    Guided,
    Translator,
    VllmBackend,
    build_embeddings,
    build_generation,
)
from freight.backends.vllm.translate import CHAT_KEYS, COMPLETION_KEYS, SEED_MASK
from freight.domain.errors import ConfigError
from freight.domain.requests import Result
from freight.wire.tools import parse_tool_spec
from freight.wire.tools_prompt import chat_messages

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GENERATE = frozenset({CHAT, COMPLETIONS})
#: The fields of ``vllm.SamplingParams`` (vLLM 0.33.0's vllm/sampling_params.py, plus 0.10's ``guided_decoding``)
#: that freight sets: a misspelt keyword would be a TypeError on the GPU machine only.
SAMPLING_FIELDS = frozenset({
    "n", "presence_penalty", "frequency_penalty", "temperature", "top_p", "top_k", "seed", "stop", "max_tokens",
    "logprobs", "logit_bias",
})


class WordPieceModel:
    """``TextModel`` over a real tokenizer, with a ChatML template."""

    def __init__(self, max_model_len: int = 512) -> None:
        self.tok = load_tokenizer(None)
        self.max_model_len = max_model_len
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return list(self.tok.encode(text + "<|im_start|>assistant\n", add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids)))

    def token(self, token_id: int) -> str:
        return self.decode([token_id])


MODEL = WordPieceModel()
T = Translator(MODEL, "m", GENERATE)
TE = Translator(MODEL, "e", frozenset({EMBEDDINGS}))
MSGS = [{"role": "user", "content": "Say hello."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def plan(endpoint: str, body: dict[str, Any]) -> GenerationPlan:
    out = T.plan(endpoint, body)
    assert isinstance(out, GenerationPlan)
    return out


def refused(out: Any) -> dict[str, Any]:
    assert isinstance(out, Result) and out.status_code == 400, out
    error: dict[str, Any] = json.loads(out.body)["error"]
    return error


# ---- what vLLM's outputs look like (its field names; vLLM is not importable here) -------------------------------
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = "stop"
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    request_id: str = "x"
    finished: bool = True


@dataclass
class PoolingOutput:
    data: list[float] = field(default_factory=list)


@dataclass
class PoolingRequestOutput:
    outputs: PoolingOutput


# ---- requests ---------------------------------------------------------------------------------------------------
def test_the_accepted_parameters_are_the_llama_lanes() -> None:
    assert CHAT_KEYS == llama_params._CHAT_KEYS
    assert COMPLETION_KEYS == llama_params._COMPLETION_KEYS


finite = st.floats(allow_nan=False, allow_infinity=False)
chat_params = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2),
    "top_p": st.one_of(st.just(0.0), st.floats(0, 1)),
    "top_k": st.integers(0, 1000),
    "seed": st.integers(-(1 << 70), 1 << 70),
    "n": st.integers(1, 8),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
    "logit_bias": st.dictionaries(st.integers(0, MODEL.vocab_size - 1).map(str), st.floats(-100, 100), max_size=3),
    "max_tokens": st.integers(1, 300),
    "logprobs": st.booleans(),
    "user": st.text(max_size=5),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                        {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}]),
})


@settings(max_examples=150, deadline=None)
@given(chat_params, st.integers(0, 20))
def test_every_chat_parameter_maps_to_vllm(params: dict[str, Any], top: int) -> None:
    body = {"model": "m", "messages": MSGS, **params}
    if params.get("logprobs"):
        body["top_logprobs"] = top
    p = plan(CHAT, body)
    (req,) = p.requests
    kw = req.sampling
    assert set(kw) <= SAMPLING_FIELDS
    assert req.prompt_token_ids == MODEL.chat(MSGS) and p.prompt_tokens == len(req.prompt_token_ids)
    assert kw["n"] == p.n == params.get("n", 1)
    assert kw["temperature"] == params.get("temperature", 1.0)
    assert kw["presence_penalty"] == params.get("presence_penalty", 0.0)
    assert kw["frequency_penalty"] == params.get("frequency_penalty", 0.0)
    if params.get("top_p") == 0.0:  # vLLM wants top_p in (0, 1]: only the most likely token is top_k=1
        assert (kw["top_p"], kw["top_k"]) == (1.0, 1)
    else:
        assert kw["top_p"] == params.get("top_p", 1.0)
        assert kw["top_k"] == (params.get("top_k") or -1)
    assert kw.get("seed") == (params["seed"] & SEED_MASK if "seed" in params else None)
    stop = params.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    assert kw.get("stop", []) == list(dict.fromkeys(s for s in stops if s))
    assert kw.get("logit_bias", {}) == {int(k): v for k, v in params.get("logit_bias", {}).items()}
    assert kw["max_tokens"] == params.get("max_tokens", MODEL.max_model_len - p.prompt_tokens)
    assert kw.get("logprobs") == (top if params.get("logprobs") else None)
    rf = params.get("response_format", {"type": "text"})["type"]
    expected = {"text": None, "json_object": Guided(json_object=True), "json_schema": Guided(json=WEATHER)}[rf]
    assert req.guided == expected
    if expected is not None:
        assert expected.kwargs() in ({"json": WEATHER}, {"json_object": True})


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(min_size=1, max_size=30), st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3),
                 st.lists(st.integers(0, MODEL.vocab_size - 1), min_size=1, max_size=10)),
       st.integers(1, 4), st.one_of(st.none(), st.integers(0, 5)), st.booleans())
def test_completion_prompts_map(prompt: Any, n: int, logprobs: int | None, echo: bool) -> None:
    body: dict[str, Any] = {"model": "m", "prompt": prompt, "n": n, "best_of": n}
    if logprobs is not None:
        body["logprobs"] = logprobs
    if echo and logprobs is None:
        body["echo"] = True
    p = plan(COMPLETIONS, body)
    texts = [prompt] if isinstance(prompt, str) else prompt
    expected = [prompt] if prompt and isinstance(prompt[0], int) else [MODEL.encode(t) for t in texts]
    assert [r.prompt_token_ids for r in p.requests] == expected
    assert all(r.sampling["max_tokens"] == 16 and r.sampling["n"] == n for r in p.requests)
    assert all(r.sampling.get("logprobs") == logprobs for r in p.requests)
    assert p.prompt_tokens == sum(map(len, expected))
    assert bool(p.echo) == ("echo" in body)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in CHAT_KEYS | COMPLETION_KEYS),
       st.one_of(st.integers(), st.text(), st.booleans(), st.lists(st.integers(), max_size=2)),
       st.sampled_from([CHAT, COMPLETIONS]))
def test_an_unsupported_parameter_refuses_only_its_request(key: str, value: Any, endpoint: str) -> None:
    good = {"model": "m", "messages": MSGS} if endpoint == CHAT else {"model": "m", "prompt": "hi"}
    out = T.plan_all(endpoint, [good, {**good, key: value}, good])
    assert isinstance(out[0], GenerationPlan) and isinstance(out[2], GenerationPlan)
    error = refused(out[1])
    assert (error["code"], error["param"], error["type"]) == ("unsupported_parameter", key, "invalid_request_error")


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"messages": MSGS, "temperature": 3}, "invalid_value", "temperature"),
    ({"messages": MSGS, "top_logprobs": 2}, "invalid_value", "top_logprobs"),
    ({"messages": MSGS, "stream": True}, "unsupported_parameter", "stream"),
    ({"messages": MSGS, "logit_bias": {str(MODEL.vocab_size): 1}}, "invalid_value", "logit_bias"),
    ({"messages": MSGS, "max_tokens": 600}, "context_length_exceeded", "messages"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "context_length_exceeded", "messages"),
    ({"messages": MSGS, "tools": TOOLS, "response_format": {"type": "json_object"}}, "unsupported_value",
     "response_format"),
    ({"messages": "hi"}, "invalid_value", "messages"),
    ({"prompt": "hi", "echo": True, "logprobs": 1}, "unsupported_value", "echo"),
    ({"prompt": "hi", "best_of": 3}, "unsupported_value", "best_of"),
    ({"prompt": "hi", "suffix": "x"}, "unsupported_parameter", "suffix"),
    ({"prompt": [MODEL.vocab_size]}, "invalid_value", "prompt"),
])
def test_bad_requests_are_400s_in_openai_shape(body: dict[str, Any], code: str, param: str) -> None:
    endpoint = CHAT if "messages" in body else COMPLETIONS
    error = refused(T.plan_all(endpoint, [body])[0])
    assert (error["code"], error["param"]) == (code, param)


def test_a_body_for_another_endpoint_is_refused() -> None:
    assert refused(T.plan_all(EMBEDDINGS, [{"input": "x"}])[0])["code"] == "unsupported_endpoint"
    assert refused(TE.plan_all(CHAT, [{"messages": MSGS}])[0])["code"] == "unsupported_endpoint"
    assert refused(T.plan_all(CHAT, [[1, 2]])[0])["message"] == "the request body must be a JSON object"


# ---- responses --------------------------------------------------------------------------------------------------
def logprob_steps(tokens: list[int], k: int) -> list[dict[int, Logprob]]:
    """Per token: the sampled token (rank 2 when ``k`` > 1, as vLLM reports a sampled token that was not the
    most likely) and ``k`` alternatives."""
    steps = []
    for t in tokens:
        step = {(t + 1 + j) % MODEL.vocab_size: Logprob(-0.1 * (j + 1), j + 1, None) for j in range(k)}
        step[t] = Logprob(-0.5, k + 1, MODEL.token(t))
        steps.append(step)
    return steps


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.sampled_from(["stop", "length", None])), min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(0, 5)))
def test_chat_responses_are_valid_openai_objects(choices: list[tuple[str, str | None]], top: int | None) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MSGS, "n": len(choices)}
    if top is not None:
        body.update(logprobs=True, top_logprobs=top)
    p = plan(CHAT, body)
    outs = []
    for i, (text, finish) in enumerate(choices):
        ids = MODEL.encode(text)[1:-1] or [1000]
        outs.append(CompletionOutput(i, text, ids, finish, logprob_steps(ids, top or 0) if top is not None else None))
    # vLLM may hand the choices back in any order; the response lists them by index
    result = build_generation(p, [RequestOutput(list(reversed(outs)))], "m", MODEL.token)
    cc = ChatCompletion.model_validate(result)
    assert [c.message.content for c in cc.choices] == [t for t, _ in choices]
    assert [c.finish_reason for c in cc.choices] == ["length" if f == "length" else "stop" for _, f in choices]
    assert cc.usage is not None and cc.usage.prompt_tokens == p.prompt_tokens
    assert cc.usage.completion_tokens == sum(len(o.token_ids) for o in outs)
    for c, o in zip(cc.choices, outs, strict=True):
        if top is None:
            assert c.logprobs is None
            continue
        assert c.logprobs is not None and c.logprobs.content is not None
        assert [e.logprob for e in c.logprobs.content] == [-0.5] * len(o.token_ids)
        for e in c.logprobs.content:
            assert [a.logprob for a in e.top_logprobs] == [-0.1 * (j + 1) for j in range(top)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3), st.integers(1, 3),
       st.one_of(st.none(), st.integers(0, 5)), st.booleans())
def test_completion_responses_are_valid_openai_objects(prompts: list[str], n: int, logprobs: int | None,
                                                       echo: bool) -> None:
    body: dict[str, Any] = {"model": "m", "prompt": prompts, "n": n}
    if logprobs is not None:
        body["logprobs"] = logprobs
    elif echo:
        body["echo"] = True
    p = plan(COMPLETIONS, body)
    outputs = []
    for prompt in prompts:
        ids = [2000, 2001]
        outs = [CompletionOutput(j, f"<{prompt}:{j}>", ids, "length",
                                 logprob_steps(ids, logprobs) if logprobs is not None else None) for j in range(n)]
        outputs.append(RequestOutput(outs))
    result = Completion.model_validate(build_generation(p, outputs, "m", MODEL.token))
    expected = [(prompt if "echo" in body else "") + f"<{prompt}:{j}>" for prompt in prompts for j in range(n)]
    assert [c.text for c in result.choices] == expected
    assert [c.index for c in result.choices] == list(range(len(prompts) * n))
    for c in result.choices:
        if logprobs is None:
            assert c.logprobs is None
            continue
        assert c.logprobs is not None and c.logprobs.tokens == [MODEL.token(2000), MODEL.token(2001)]
        assert c.logprobs.text_offset == [0, len(MODEL.token(2000))]
        assert c.logprobs.top_logprobs is not None and all(len(d) == logprobs for d in c.logprobs.top_logprobs)


# ---- tool calls -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls_are_guided_and_parsed(choice: Any) -> None:
    p = plan(CHAT, {"model": "m", "messages": MSGS, "tools": TOOLS, "tool_choice": choice})
    guided = p.requests[0].guided
    assert p.forced_tools and guided is not None and guided.json is not None
    answer = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    jsonschema.validate(answer, guided.json)  # what vLLM's structured output lets through
    if isinstance(choice, dict):  # a named function: no other may be called
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate([{"name": "get_time", "arguments": {}}], guided.json)
    text = json.dumps(answer)
    cc = ChatCompletion.model_validate(build_generation(
        p, [RequestOutput([CompletionOutput(0, text, [5, 6])])], "m", MODEL.token))
    (c,) = cc.choices
    assert c.finish_reason == "tool_calls" and c.message.content is None and c.message.tool_calls is not None
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # cut by max_tokens: left as text
    cut = build_generation(p, [RequestOutput([CompletionOutput(0, text[:-3], [5], "length")])], "m", MODEL.token)
    assert cut["choices"][0]["message"]["content"] == text[:-3] and cut["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("text", "calls"), [
    ('<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>', ["get_time"]),
    (' <tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]'
     '</tool_call>\n', ["get_weather", "get_time"]),
    ("It is sunny.", None),
    ('<tool_call>[{"name": "unknown", "arguments": {}}]</tool_call>', None),
])
def test_auto_tool_calls_are_read_from_tags(text: str, calls: list[str] | None) -> None:
    p = plan(CHAT, {"model": "m", "messages": MSGS, "tools": TOOLS})
    assert not p.forced_tools and p.requests[0].guided is None
    # the tools are described in the system prompt, as for the llama.cpp lane
    spec = parse_tool_spec({"tools": TOOLS})
    assert p.requests[0].prompt_token_ids == MODEL.chat(chat_messages(MSGS, spec))
    assert len(p.requests[0].prompt_token_ids) > len(MODEL.chat(MSGS))
    cc = ChatCompletion.model_validate(build_generation(
        p, [RequestOutput([CompletionOutput(0, text, [5])])], "m", MODEL.token))
    message = cc.choices[0].message
    if calls is None:
        assert message.content == text and message.tool_calls is None and cc.choices[0].finish_reason == "stop"
    else:
        assert message.tool_calls is not None and [c.function.name for c in message.tool_calls] == calls


def test_tool_choice_none_is_plain_text() -> None:
    p = plan(CHAT, {"model": "m", "messages": MSGS, "tools": TOOLS, "tool_choice": "none"})
    text = '<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>'
    body = build_generation(p, [RequestOutput([CompletionOutput(0, text, [5])])], "m", MODEL.token)
    assert body["choices"][0]["message"]["content"] == text


# ---- embeddings -------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(min_size=1, max_size=40), st.lists(st.text(min_size=1, max_size=20), min_size=1,
                                                           max_size=4)),
       st.sampled_from([None, "float", "base64"]))
def test_embeddings_round_trip(inputs: Any, fmt: str | None) -> None:
    body: dict[str, Any] = {"model": "e", "input": inputs}
    if fmt is not None:
        body["encoding_format"] = fmt
    p = TE.plan(EMBEDDINGS, body)
    assert isinstance(p, EmbeddingPlan)
    texts = [inputs] if isinstance(inputs, str) else inputs
    assert p.inputs == [MODEL.encode(t) for t in texts] and p.prompt_tokens == sum(map(len, p.inputs))
    vectors = [[0.5 * i, -0.25, 1.0] for i in range(len(texts))]
    body_out = build_embeddings(p, vectors, "e")
    assert [d["index"] for d in body_out["data"]] == list(range(len(texts)))
    assert body_out["usage"] == {"prompt_tokens": p.prompt_tokens, "total_tokens": p.prompt_tokens}
    if fmt == "base64":  # the SDK decodes base64 itself, into the floats (little-endian float32, as OpenAI sends)
        for d, v in zip(body_out["data"], vectors, strict=True):
            raw = base64.b64decode(d["embedding"])
            assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == v
    else:
        response = CreateEmbeddingResponse.model_validate(body_out)
        assert [d.embedding for d in response.data] == vectors


def test_embedding_outputs_as_vllm_gives_them() -> None:
    from freight.backends.vllm.responses import embedding_vector

    assert embedding_vector(PoolingRequestOutput(PoolingOutput([1.0, 2.0]))) == [1.0, 2.0]


@pytest.mark.parametrize(("body", "code"), [
    ({"input": []}, "invalid_value"),
    ({"input": [1, 2, 3]}, "invalid_value"),
    ({"input": ""}, "invalid_value"),
    ({"input": "x", "encoding_format": "hex"}, "invalid_value"),
    ({"input": "x", "dimensions": 0}, "invalid_value"),
    ({"input": "word " * 600}, "context_length_exceeded"),
    ({"input": "x", "truncate": True}, "unsupported_parameter"),
    ({}, "missing_required_parameter"),
])
def test_bad_embedding_requests(body: dict[str, Any], code: str) -> None:
    assert refused(TE.plan_all(EMBEDDINGS, [body])[0])["code"] == code


# ---- configuration and a machine without vLLM -------------------------------------------------------------------
def test_without_vllm_the_config_says_how_to_install_it() -> None:
    assert importlib.util.find_spec("vllm") is None, "this test describes a machine without vLLM"
    with pytest.raises(ConfigError) as info:
        build_backends({"qwen": {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"}})
    assert "pip install 'freight[vllm]'" in info.value.message and '[models."qwen"]' in info.value.message
    # Built directly (as inside a Ray actor), the same error comes at start, before anything is claimed.
    backend = VllmBackend(model_id="qwen", model="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ConfigError, match="needs the vllm package"):
        asyncio.run(backend.start())
    results = asyncio.run(backend.execute(CHAT, [{"model": "qwen", "messages": MSGS}]))
    assert [r.code for r in results if not isinstance(r, Result)] == ["backend_unavailable"]


@pytest.mark.parametrize(("options", "param"), [
    ({"task": "classify"}, "task"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"max_model_len": "long"}, "max_model_len"),
    ({"dtype": "int3"}, "dtype"),
    ({"engine_args": 5}, "engine_args"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError) as info:
        VllmBackend(model_id="m", model="/models/m", **options)
    assert info.value.param == param


def test_options_reach_vllm_llm_keywords() -> None:
    b = VllmBackend(model_id="m", model="/models/m", tensor_parallel_size=2, gpu_memory_utilization=0.5,
                    max_model_len=4096, dtype="bfloat16", engine_args={"max_num_seqs": 128})
    assert b.llm_kwargs == {"model": "/models/m", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                            "dtype": "bfloat16", "max_model_len": 4096, "trust_remote_code": False,
                            "enforce_eager": False, "max_num_seqs": 128}
    assert {m.id: m.endpoints for m in b.models()} == {"m": GENERATE}
    embed = VllmBackend(model_id="e", task="embed")
    assert embed.llm_kwargs["model"] == "e" and embed.models()[0].endpoints == frozenset({EMBEDDINGS})


def test_freight_run_with_a_vllm_model_here_is_a_clear_error(tmp_path: Any) -> None:
    """The user's path: ``freight run`` on a machine without vLLM stops at once with the fix, no traceback."""
    config = tmp_path / "freight.toml"
    config.write_text('[models."qwen"]\nbackend = "vllm"\nmodel = "Qwen/Qwen2.5-0.5B-Instruct"\n')
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": CHAT,
                                 "body": {"model": "qwen", "messages": MSGS}}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "freight", "run", str(batch), "-o", str(tmp_path / "out.jsonl"),
                           "--data-dir", str(tmp_path / "data"), "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert 'error: [models."qwen"]: backend "vllm" needs the vllm package' in output
    assert "pip install 'freight[vllm]'" in output and "Traceback" not in output
