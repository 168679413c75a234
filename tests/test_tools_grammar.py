"""The tool-call grammar as llama.cpp runs it: which texts it lets the model write.

The grammar (freight/wire/tools.py wrapped around the backend's JSON-schema converter) is loaded into llama.cpp's
own grammar sampler over the bundled model's vocabulary (vocabulary only: no weights, no context), and a text is
fed token by token; it is accepted when no token is masked and the end of generation is allowed after it.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.backends.llama_cpp.params import tool_grammar
from freight.backends.llama_cpp.weights import smollm2_path
from freight.wire.tools import MAX_PARALLEL_CALLS, Tool, ToolSpec, call_schema
from freight.wire.tools_prompt import render_calls

lc: Any = importlib.import_module("llama_cpp")  # installed by `make`: a missing one fails these tests, never skips

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                             "unit": {"enum": ["celsius", "fahrenheit"]},
                                             "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city"], "additionalProperties": False}
ITEMS = {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
         "required": ["items"], "additionalProperties": False,
         "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                            "additionalProperties": False}}}
TOOLS = (Tool("get_weather", "weather", WEATHER), Tool("count", None, ITEMS), Tool("ping", None, {"type": "object"}))


class Vocab:
    def __init__(self) -> None:
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self.model = lc.llama_model_load_from_file(str(smollm2_path()).encode(), params)
        assert self.model
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.eos = lc.llama_vocab_eos(self.vocab)

    def tokens(self, text: str) -> list[int]:
        data = text.encode()
        buf = (lc.llama_token * (len(data) + 8))()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0
        return list(buf[:n])

    def accepts(self, grammar: str, text: str) -> bool:
        sampler = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, "llama.cpp could not parse the grammar"
        try:
            for token in [*self.tokens(text), self.eos]:
                one = (lc.llama_token_data * 1)()
                one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
                arr = lc.llama_token_data_array(one, 1, -1, False)
                lc.llama_sampler_apply(sampler, ctypes.byref(arr))
                if math.isinf(one[0].logit):
                    return False
                if token != self.eos:
                    lc.llama_sampler_accept(sampler, token)
            return True
        finally:
            lc.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def vocab() -> Iterator[Vocab]:
    v = Vocab()
    yield v
    lc.llama_model_free(v.model)


def spec(choice: str = "required", forced: str | None = None, parallel: bool = True) -> ToolSpec:
    return ToolSpec(TOOLS, choice, forced, parallel)


def call(name: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return name, arguments


GOOD = [call("get_weather", {"city": "Paris", "unit": "celsius", "days": 7}),
        call("count", {"items": [{"n": 1}, {"n": -20}]}), call("ping", {}), call("ping", {"any": ["thing", 1]})]
BAD = [call("get_weather", {"unit": "celsius"}), call("get_weather", {"city": "x" * 13}),
       call("get_weather", {"city": "Paris", "unit": "kelvin"}), call("count", {"items": [{"n": "1"}]}),
       call("nope", {}), call("get_weather", {"city": "Paris", "extra": 1}),
       call("get_weather", {"city": "Paris", "days": 0}), call("get_weather", {"city": "Paris", "days": 12})]


def test_forced_calls_accept_valid_calls_only(vocab: Vocab) -> None:
    g = tool_grammar(spec())
    for good in GOOD:
        assert vocab.accepts(g, render_calls([good])), good
    assert vocab.accepts(g, render_calls(GOOD))  # several calls, parallel
    for bad in BAD:
        assert not vocab.accepts(g, render_calls([bad])), bad
    for text in ("Sure!", "", '[{"name": "ping", "arguments": {}}]', " " + render_calls([GOOD[2]]),
                 render_calls([GOOD[2]]) + " and more", render_calls([GOOD[2]] * (MAX_PARALLEL_CALLS + 1))):
        assert not vocab.accepts(g, text), text


def test_named_and_single_calls(vocab: Vocab) -> None:
    named = tool_grammar(spec(forced="count", parallel=False))
    assert vocab.accepts(named, render_calls([GOOD[1]]))
    assert not vocab.accepts(named, render_calls([GOOD[0]]))
    assert not vocab.accepts(named, render_calls([GOOD[1], GOOD[1]]))
    assert vocab.accepts(tool_grammar(spec(parallel=True)), render_calls([GOOD[1], GOOD[1]]))


def test_auto_allows_text_or_a_valid_call(vocab: Vocab) -> None:
    g = tool_grammar(spec("auto"))
    for text in ("The weather is fine.", "", "<", "<tool", "<tool_cal", "<b>bold</b> text", "a <tool_call> inside",
                 "Ünïcode ✓ 日本"):
        assert vocab.accepts(g, text), text
    assert vocab.accepts(g, render_calls([GOOD[0]]))
    for text in (render_calls([BAD[0]]), "<tool_call>", "<tool_call>whatever", " leading space", "\nnewline first"):
        assert not vocab.accepts(g, text), text


@settings(max_examples=25, deadline=None)
@given(city=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn", "Co")), max_size=12),
       unit=st.sampled_from(["celsius", "fahrenheit", None]), ns=st.lists(st.integers(-10**6, 10**6), max_size=3))
def test_any_valid_arguments_are_accepted(vocab: Vocab, city: str, unit: str | None, ns: list[int]) -> None:
    weather: dict[str, Any] = {"city": city} if unit is None else {"city": city, "unit": unit}
    calls = [call("get_weather", weather), call("count", {"items": [{"n": n} for n in ns]})]
    jsonschema.validate([{"name": n, "arguments": a} for n, a in calls], call_schema(spec()))
    assert vocab.accepts(tool_grammar(spec()), render_calls(calls)), json.dumps(calls)
