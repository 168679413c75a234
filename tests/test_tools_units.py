"""Function calling, the pure parts: tool specs, the calls' JSON schema, answer parsing, prompt rendering, and the
Anthropic tools translation (freight/wire/tools.py, tools_prompt.py, messages_chat.py). No model runs here; the
grammar's acceptance is checked in tests/test_tools_grammar.py."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.wire.messages_chat import Untranslatable, chat_to_message, messages_to_chat, tool_use_id
from freight.wire.tools import (
    MAX_PARALLEL_CALLS,
    TOOL_CALL_OPEN,
    Tool,
    ToolCall,
    ToolsError,
    ToolSpec,
    call_schema,
    enforce_int_ranges,
    openai_tool_calls,
    parse_tool_calls,
    parse_tool_spec,
    wrap_grammar,
)
from freight.wire.tools_prompt import chat_messages, render_calls

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"], "additionalProperties": False}


def fn(name: str, parameters: Any = None, **extra: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"name": name, **extra}
    if parameters is not None:
        f["parameters"] = parameters
    return {"type": "function", "function": f}


def spec(*tools: Tool, choice: str = "auto", forced: str | None = None, parallel: bool = True) -> ToolSpec:
    return ToolSpec(tuple(tools), choice, forced, parallel)


# ---- tools / tool_choice / parallel_tool_calls --------------------------------------------------------------------

def test_tool_spec_defaults_and_choices() -> None:
    assert parse_tool_spec({"messages": []}) is None
    assert parse_tool_spec({"tools": [], "tool_choice": "none"}) is None
    s = parse_tool_spec({"tools": [fn("w", WEATHER, description="weather"), fn("noargs")]})
    assert s is not None and s.choice == "auto" and s.parallel and s.forced is None and s.calls_allowed
    assert s.tools[0] == Tool("w", "weather", WEATHER)
    assert s.tools[1].parameters == {"type": "object", "properties": {}}  # omitted: no parameters
    named = parse_tool_spec({"tools": [fn("w", WEATHER), fn("x")], "parallel_tool_calls": False,
                             "tool_choice": {"type": "function", "function": {"name": "x"}}})
    assert named is not None and (named.choice, named.forced, named.parallel) == ("required", "x", False)
    assert [t.name for t in named.callable_tools] == ["x"]
    none = parse_tool_spec({"tools": [fn("w")], "tool_choice": "none"})
    assert none is not None and not none.calls_allowed


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {}}, "tools"),
    ({"tools": ["x"]}, "tools[0]"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [fn("has space")]}, "tools[0].function.name"),
    ({"tools": [fn("a" * 65)]}, "tools[0].function.name"),
    ({"tools": [fn("f", {"type": "string"})]}, "tools[0].function.parameters"),
    ({"tools": [fn("f", description=3)]}, "tools[0].function.description"),
    ({"tools": [fn("f", other=1)]}, "tools[0].function.other"),
    ({"tools": [fn("f"), fn("f")]}, "tools[1].function.name"),
    ({"tools": [fn("f")] * 129}, "tools"),
    ({"tools": [fn("f")], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [fn("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice.function.name"),
    ({"tools": [fn("f")], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
])
def test_bad_tool_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ToolsError) as e:
        parse_tool_spec(body)
    assert e.value.param == param, e.value.message


# ---- the calls' schema and parsing the answer ---------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
NAMES = st.from_regex(r"[a-zA-Z0-9_-]{1,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=4, unique=True), data=st.data())
def test_calls_round_trip_and_validate_against_the_schema(names: list[str], data: st.DataObject) -> None:
    tools = tuple(Tool(n, None, {"type": "object"}) for n in names)
    parallel = data.draw(st.booleans())
    s = spec(*tools, choice="required", parallel=parallel)
    count = data.draw(st.integers(1, MAX_PARALLEL_CALLS if parallel else 1))
    calls = [ToolCall(data.draw(st.sampled_from(names)), data.draw(st.dictionaries(st.text(max_size=6), JSON,
                                                                                   max_size=3)))
             for _ in range(count)]
    text = render_calls([(c.name, c.arguments) for c in calls])  # what the history shows the model
    assert parse_tool_calls(text, s) == calls
    jsonschema.validate([{"name": c.name, "arguments": c.arguments} for c in calls], call_schema(s))
    for c, oc in zip(calls, openai_tool_calls(calls), strict=True):
        assert oc["id"].startswith("call_") and oc["type"] == "function"
        assert oc["function"]["name"] == c.name and json.loads(oc["function"]["arguments"]) == c.arguments


def test_call_schema_enforces_names_arguments_and_count() -> None:
    s = spec(Tool("w", None, WEATHER), Tool("n", None, {"type": "object", "properties": {}}), choice="auto",
             parallel=False)
    schema = call_schema(s)
    jsonschema.validate([{"name": "w", "arguments": {"city": "Oslo", "days": 2}}], schema)
    for bad in ([], [{"name": "w", "arguments": {"days": 2}}], [{"name": "x", "arguments": {}}],
                [{"name": "w", "arguments": {"city": "a"}}, {"name": "n", "arguments": {}}],
                [{"name": "w", "arguments": {"city": "a"}, "extra": 1}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    forced = call_schema(spec(Tool("w", None, WEATHER), Tool("n", None, {}), choice="required", forced="n"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "w", "arguments": {"city": "a"}}], forced)
    assert call_schema(spec(Tool("w", None, WEATHER)))["maxItems"] == MAX_PARALLEL_CALLS


def test_refs_of_each_tool_point_at_its_own_definitions() -> None:
    a = {"type": "object", "properties": {"item": {"$ref": "#/$defs/Item"}}, "required": ["item"],
         "$defs": {"Item": {"type": "integer"}}}
    b = {"type": "object", "properties": {"item": {"$ref": "#/definitions/Item"}, "next": {"$ref": "#"}},
         "required": ["item"], "definitions": {"Item": {"type": "string"}}}
    schema = call_schema(spec(Tool("a", None, a), Tool("b", None, b)))
    jsonschema.validate([{"name": "a", "arguments": {"item": 1}},
                         {"name": "b", "arguments": {"item": "x", "next": {"item": "y"}}}], schema)
    for bad in ({"name": "a", "arguments": {"item": "1"}}, {"name": "b", "arguments": {"item": 1}},
                {"name": "b", "arguments": {"item": "x", "next": {"item": 2}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate([bad], schema)
    with pytest.raises(ToolsError):
        call_schema(spec(Tool("c", None, {"type": "object", "properties": {"x": {"$ref": "other.json"}}})))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_text_is_never_read_as_a_call(text: str) -> None:
    s = spec(Tool("w", None, {"type": "object"}))
    if not text.startswith(TOOL_CALL_OPEN):
        assert parse_tool_calls(text, s) is None


@pytest.mark.parametrize("text", [
    '<tool_call>[{"name": "w", "arguments": {"city": "Oslo"}}',  # cut by max_tokens
    '<tool_call>[{"name": "w", "arguments": {"city": "Oslo"}}]',
    '<tool_call>[{"name": "v", "arguments": {}}]</tool_call>',  # not a tool
    '<tool_call>[{"name": "w", "arguments": "x"}]</tool_call>',
    '<tool_call>[{"name": "w"}]</tool_call>',
    "<tool_call>[]</tool_call>",
    '<tool_call>[{"name": "w", "arguments": {}}, {"name": "w", "arguments": {}}]</tool_call>',  # not parallel
])
def test_incomplete_or_foreign_calls_stay_text(text: str) -> None:
    assert parse_tool_calls(text, spec(Tool("w", None, {"type": "object"}), parallel=False)) is None


def test_a_call_is_not_read_when_tool_choice_is_none() -> None:
    call = '<tool_call>[{"name": "w", "arguments": {}}]</tool_call>'
    assert parse_tool_calls(call, spec(Tool("w", None, {}), choice="none")) is None
    assert parse_tool_calls(call + "\n", spec(Tool("w", None, {}))) == [ToolCall("w", {})]


def test_grammar_wrapping() -> None:
    calls = 'root ::= "[" space item "]" space\nitem ::= "{}"\nspace ::= " "?'
    forced = wrap_grammar(calls, spec(Tool("w", None, {}), choice="required"))
    assert forced.splitlines()[0] == 'root ::= "<tool_call>" freight-tool-calls "</tool_call>"'
    assert 'freight-tool-calls ::= "[" space item "]" space' in forced and "freight-text" not in forced
    auto = wrap_grammar(calls, spec(Tool("w", None, {})))
    assert auto.splitlines()[0].startswith("root ::= ( \"<tool_call>\" freight-tool-calls")
    assert "freight-text ::= " in auto
    with pytest.raises(ValueError):
        wrap_grammar(calls, spec(Tool("w", None, {}), choice="none"))


BOUND = st.none() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(lo=BOUND, xlo=BOUND, hi=BOUND, xhi=BOUND)
def test_small_integer_ranges_become_the_enum_of_their_values(lo: Any, xlo: Any, hi: Any, xhi: Any) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for key, value in (("minimum", lo), ("exclusiveMinimum", xlo), ("maximum", hi), ("exclusiveMaximum", xhi)):
        if value is not None:
            schema[key] = value
    out = enforce_int_ranges({"type": "object", "properties": {"n": schema}})["properties"]["n"]
    allowed = [n for n in range(-10, 11) if jsonschema.Draft202012Validator(schema).is_valid(n)]
    if "enum" in out:
        assert out == {"enum": allowed} and allowed
    else:
        assert out == schema  # unbounded on a side, or empty: left as it was
        assert not allowed or (lo is None and xlo is None) or (hi is None and xhi is None)
    big = {"type": "integer", "minimum": 0, "maximum": 256}
    assert enforce_int_ranges(big) == big
    assert enforce_int_ranges({"type": "integer", "minimum": True, "maximum": 3})["minimum"] is True


# ---- messages with tools ------------------------------------------------------------------------------------------

def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_history_with_calls_and_results_is_rendered() -> None:
    s = spec(Tool("w", "weather", WEATHER))
    turns = chat_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "w", '{"city": "Oslo"}'),
                                                              call("c2", "w", '{"city": "Rome"}')]},
        {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks"},
    ], s)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "user"]
    assert turns[0]["content"].startswith("Be brief.\n\n") and '"name": "w"' in turns[0]["content"]
    assert turns[2]["content"] == ('<tool_call>[{"name": "w", "arguments": {"city": "Oslo"}}, '
                                   '{"name": "w", "arguments": {"city": "Rome"}}]</tool_call>')
    assert turns[3]["content"] == ('<tool_response>\n{"name": "w", "content": "sunny"}\n</tool_response>\n'
                                   '<tool_response>\n{"name": "w", "content": "rain"}\n</tool_response>')
    # Without tools in the request (or with tool_choice none), the history still renders; no tools block.
    plain = chat_messages([{"role": "user", "content": "q"}], spec(Tool("w", None, {}), choice="none"))
    assert plain == [{"role": "user", "content": "q"}]
    assert chat_messages([{"role": "user", "content": "q"}], s)[0]["role"] == "system"


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "tool", "tool_call_id": "c1", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("c1", "w", "{}")]},
      {"role": "tool", "tool_call_id": "c9", "content": "x"}], "messages[2].tool_call_id"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("c1", "w", "{}")]},
      {"role": "user", "content": "x"}], "messages[2]"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("c1", "w", "{}")]}], "messages"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("c1", "w", "{}")]},
      {"role": "tool", "tool_call_id": "c1", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "y"}],
     "messages[3].tool_call_id"),
    ([{"role": "user", "content": "q", "tool_calls": [call("c1", "w", "{}")]}], "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": {}}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "function", "name": "w", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0]"),
])
def test_bad_tool_history_names_the_message(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(ToolsError) as e:
        chat_messages(messages, None)
    assert e.value.param == param, e.value.message


# ---- Anthropic tools translation ----------------------------------------------------------------------------------

def test_anthropic_tools_translate() -> None:
    params: dict[str, Any] = {
        "model": "m", "max_tokens": 50,
        "tools": [{"name": "w", "description": "weather", "input_schema": WEATHER, "cache_control": {"type": "x"}},
                  {"type": "custom", "name": "n", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "w",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                                         {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                                          "content": [{"type": "text", "text": "down"}]},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ],
    }
    chat = messages_to_chat(params)
    assert chat["tools"] == [{"type": "function", "function": {"name": "w", "parameters": WEATHER,
                                                               "description": "weather"}},
                             {"type": "function", "function": {"name": "n", "parameters": {"type": "object"}}}]
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    for choice, expected in (({"type": "auto"}, {"tool_choice": "auto"}),
                             ({"type": "any", "disable_parallel_tool_use": True},
                              {"tool_choice": "required", "parallel_tool_calls": False}),
                             ({"type": "tool", "name": "w"}, {"tool_choice": {"type": "function",
                                                                               "function": {"name": "w"}}}),
                             ({"type": "none"}, {"tool_choice": "none"})):
        out = messages_to_chat({**params, "tool_choice": choice})
        assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


@pytest.mark.parametrize(("extra", "starts"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type: server tools"),
    ({"tools": [{"name": "t"}]}, "tools.0.input_schema: Field required"),
    ({"tools": [{"name": "t", "input_schema": {}, "strict": True}]}, "tools.0.strict:"),
    ({"tool_choice": {"type": "any"}}, "tool_choice: only allowed when tools"),
    ({"tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "sometimes"}}, "tool_choice.type:"),
    ({"tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "tool"}}, "tool_choice.name:"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}}]}]},
     "messages.0.content.0.type:"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0.tool_use_id:"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a",
                                                   "content": [{"type": "image"}]}]}]},
     "messages.0.content.0.content.0.type:"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "t", "input": []}]},
                   {"role": "user", "content": "x"}]}, "messages.1.content.0.input:"),
])
def test_anthropic_tools_that_do_not_translate(extra: dict[str, Any], starts: str) -> None:
    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(Untranslatable) as e:
        messages_to_chat(params)
    assert str(e.value).startswith(starts), str(e.value)


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.tuples(NAMES, st.dictionaries(st.text(max_size=6), JSON, max_size=3)), min_size=1,
                      max_size=3),
       text=st.none() | st.text(min_size=1, max_size=10))
def test_tool_calls_become_tool_use_blocks_and_back(calls: list[tuple[str, dict[str, Any]]], text: str | None) -> None:
    tool_calls = openai_tool_calls([ToolCall(n, a) for n, a in calls])
    chat = {"choices": [{"message": {"role": "assistant", "content": text, "tool_calls": tool_calls},
                         "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    message = chat_to_message(chat, "m", None)
    assert message["stop_reason"] == "tool_use"
    blocks = message["content"]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    assert [(b["name"], b["input"]) for b in uses] == calls
    assert all(b["id"] == tool_use_id(c["id"]) and b["id"].startswith("toolu_") for b, c in zip(uses, tool_calls,
                                                                                                 strict=True))
    assert [b["type"] for b in blocks] == ["text"] * bool(text) + ["tool_use"] * len(calls)
    # The Message as the next request's history: back to the same calls.
    back = messages_to_chat({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": blocks},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"], "content": "ok"}
                                     for b in uses]}]})
    assistant = back["messages"][1]
    assert assistant["content"] == (text or None)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assistant["tool_calls"]] == calls
    assert [m["tool_call_id"] for m in back["messages"][2:]] == [b["id"] for b in uses]


def test_bad_tool_calls_in_an_answer_are_a_bad_response() -> None:
    from freight.wire.messages_chat import BadChatResponse
    for calls in ("x", [{"function": {"name": "w", "arguments": "{"}}], [{"function": {"name": "w",
                                                                                        "arguments": "[1]"}}]):
        with pytest.raises(BadChatResponse):
            chat_to_message({"choices": [{"message": {"content": None, "tool_calls": calls}}]}, "m", None)
