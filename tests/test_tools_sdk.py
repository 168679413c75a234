"""Function calling on the bundled chat model through both official SDKs against a real ``freight serve``.

One server with the defaults (SmolLM2-135M-Instruct on llama.cpp). OpenAI: ``tools`` / ``tool_choice`` /
``parallel_tool_calls`` in a batch and in real time, every forced call's arguments parsed and validated against the
tool's schema; a conversation that sends a tool result back (assistant ``tool_calls`` + ``tool`` message).
Anthropic: the same through the Messages translation (``tool_use`` / ``tool_result`` blocks), real time and batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from anthropic import Anthropic
from anthropic.types import Message
from anthropic.types.messages import MessageBatch
from openai import OpenAI
from openai.types import Batch
from openai.types.chat import ChatCompletion
from servers import TERMINAL, FreightServer, jsonl_bytes, parse_jsonl, wait_for

CHAT_MODEL = "SmolLM2-135M-Instruct"
# Generous: on the shared 2-core development VM one request with ~450 prompt tokens can take a minute.
BATCH_TIMEOUT_S = 540
pytestmark = pytest.mark.timeout(600)
CONFIG = """\
[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
"""

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
FLIGHT = {
    "type": "object",
    "properties": {
        "origin": {"type": "string", "maxLength": 16},
        "destination": {"type": "string", "maxLength": 16},
        "passengers": {"type": "array", "items": {"$ref": "#/$defs/Passenger"}, "minItems": 1, "maxItems": 2},
    },
    "required": ["origin", "destination", "passengers"],
    "additionalProperties": False,
    "$defs": {"Passenger": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                                             "age": {"type": "integer"}},
                            "required": ["name", "age"], "additionalProperties": False}},
}
SCHEMAS = {"get_weather": WEATHER, "book_flight": FLIGHT}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "book_flight", "description": "Book a flight", "parameters": FLIGHT}},
]
ANTHROPIC_TOOLS: list[dict[str, Any]] = [
    {"name": t["function"]["name"], "description": t["function"]["description"],
     "input_schema": t["function"]["parameters"]} for t in TOOLS
]
QUESTIONS = ["What is the weather in Paris?", "Book a flight from Oslo to Rome for Ann, 34.",
             "Is it raining in Tokyo today?", "I need two seats from Berlin to Madrid."]


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(CONFIG)


@pytest.fixture(scope="module")
def openai_client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client().with_options(timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def anthropic_client(server: FreightServer) -> Iterator[Anthropic]:
    c = Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    yield c
    c.close()


def check_calls(completion: ChatCompletion, *, forced: str | None = None, single: bool = False) -> list[Any]:
    """A tool-call choice: content null, finish_reason tool_calls, every call valid against its tool's schema."""
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls, choice
    assert not single or len(calls) == 1
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in SCHEMAS and (forced is None or call.function.name == forced)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def check_auto(completion: ChatCompletion) -> None:
    choice = completion.choices[0]
    if choice.message.tool_calls:
        check_calls(completion)
    else:
        assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str), choice


def chat_line(custom_id: str, question: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": question}], "tools": TOOLS,
                     "max_tokens": 200, **body}}


def history(call_id: str = "call_1") -> list[dict[str, Any]]:
    """A conversation whose last turn is a tool result."""
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 18, "sky": "cloudy"}'},
    ]


# ---- OpenAI ----------------------------------------------------------------------------------------------------

def test_openai_batch_with_tools(openai_client: OpenAI) -> None:
    named = {"type": "function", "function": {"name": "book_flight"}}
    lines = [chat_line(f"required-{i}", q, tool_choice="required", temperature=0.8, seed=i)
             for i, q in enumerate(QUESTIONS[:2])]
    lines += [chat_line("single", QUESTIONS[2], tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                        seed=3),
              chat_line("named", QUESTIONS[3], tool_choice=named, parallel_tool_calls=False, temperature=0.8, seed=4),
              chat_line("auto", QUESTIONS[0], temperature=0, max_tokens=48),
              chat_line("none", QUESTIONS[0], tool_choice="none", max_tokens=8, temperature=0),
              chat_line("result", "", temperature=0, max_tokens=16),
              chat_line("bad-choice", QUESTIONS[0], tool_choice={"type": "function", "function": {"name": "nope"}})]
    lines[-2]["body"]["messages"] = history()

    f = openai_client.files.create(file=("tools.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = openai_client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    def finished() -> Batch | None:
        b = openai_client.batches.retrieve(batch.id)
        return b if b.status in TERMINAL else None

    final: Batch = wait_for(finished, BATCH_TIMEOUT_S, f"batch {batch.id}", every_s=0.25)
    assert final.status == "completed" and final.output_file_id is not None
    out: dict[str, Any] = {}
    for file_id in (final.output_file_id, final.error_file_id):
        if file_id is not None:
            out.update((line["custom_id"], line) for line in parse_jsonl(openai_client.files.content(file_id).content))
    assert set(out) == {line["custom_id"] for line in lines}

    bad = out.pop("bad-choice")["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "tool_choice.function.name"
    bodies = {}
    for cid, line in out.items():
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        bodies[cid] = ChatCompletion.model_validate(line["response"]["body"])
    for i in range(2):
        check_calls(bodies[f"required-{i}"])
    check_calls(bodies["single"], single=True)
    check_calls(bodies["named"], forced="book_flight", single=True)
    check_auto(bodies["auto"])
    none = bodies["none"].choices[0]
    assert none.message.tool_calls is None and isinstance(none.message.content, str)
    check_auto(bodies["result"])


def test_openai_real_time_call_then_result(openai_client: OpenAI) -> None:
    first = openai_client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},  # type: ignore[arg-type]
        max_tokens=120, temperature=0)
    [call] = check_calls(first, forced="get_weather", single=True)
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    followup = openai_client.chat.completions.create(
        model=CHAT_MODEL, tools=TOOLS, max_tokens=48, temperature=0,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "What is the weather in Paris?"}, assistant,  # type: ignore[list-item]
                  {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, cloudy"}])
    check_auto(followup)


# ---- Anthropic -------------------------------------------------------------------------------------------------

def check_tool_use(message: Message, *, forced: str | None = None) -> list[Any]:
    assert message.stop_reason == "tool_use", message
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses and all(b.type in ("text", "tool_use") for b in message.content)
    for b in uses:
        assert b.id.startswith("toolu_") and b.name in SCHEMAS and (forced is None or b.name == forced)
        jsonschema.validate(b.input, SCHEMAS[b.name])
    return uses


def check_message(message: Message) -> None:
    if message.stop_reason == "tool_use":
        check_tool_use(message)
    else:
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert all(b.type == "text" for b in message.content)


def test_anthropic_real_time_tool_use_then_result(anthropic_client: Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = anthropic_client.messages.create(
        model=CHAT_MODEL, max_tokens=120, extra_body={"temperature": 0}, messages=[question],  # type: ignore[list-item]
        tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "get_weather"})  # type: ignore[arg-type]
    [use] = check_tool_use(first, forced="get_weather")
    followup = anthropic_client.messages.create(
        model=CHAT_MODEL, max_tokens=48, extra_body={"temperature": 0}, tools=ANTHROPIC_TOOLS,  # type: ignore[arg-type]
        messages=[question, {"role": "assistant", "content": first.content},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "18 degrees, cloudy"}]}])
    check_message(followup)


SAMPLED_MAX_TOKENS = 576


def test_anthropic_batch_with_tools(anthropic_client: Anthropic) -> None:
    def req(custom_id: str, question: str, **extra: Any) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": {"model": CHAT_MODEL, "max_tokens": 200, "tools": ANTHROPIC_TOOLS,
                                                   "messages": [{"role": "user", "content": question}], **extra}}

    # Sampled at 0.7 (no seed in this API), the 135M model now and then writes an argument that runs on past any
    # room: 400 tokens cut one off, then 576 (what the 1,024 tokens of a request leave after its ~443-token prompt)
    # did too. So four sampled requests; a whole answer must be a valid call, and at least one must be whole.
    requests = [req(f"any-{i}", q, tool_choice={"type": "any"}, temperature=0.7, max_tokens=SAMPLED_MAX_TOKENS)
                for i, q in enumerate(QUESTIONS[2:] * 2)]
    requests += [req("tool", QUESTIONS[1], tool_choice={"type": "tool", "name": "book_flight",
                                                        "disable_parallel_tool_use": True}),
                 req("auto", QUESTIONS[0], temperature=0, max_tokens=48),
                 req("result", "", temperature=0, max_tokens=16)]
    requests[-1]["params"]["messages"] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}]},
    ]
    batch = anthropic_client.messages.batches.create(requests=requests)  # type: ignore[arg-type]

    def ended() -> MessageBatch | None:
        b = anthropic_client.messages.batches.retrieve(batch.id)
        return b if b.processing_status == "ended" else None

    done: MessageBatch = wait_for(ended, BATCH_TIMEOUT_S, f"batch {batch.id}", every_s=0.25)
    assert done.request_counts.succeeded == len(requests), done.request_counts
    got = {r.custom_id: r.result for r in anthropic_client.messages.batches.results(batch.id)}
    messages = {cid: r.message for cid, r in got.items() if r.type == "succeeded"}
    whole = 0
    for i in range(4):
        message = messages[f"any-{i}"]
        if message.stop_reason == "max_tokens":  # held to the calls' grammar until its room ran out
            assert message.usage.output_tokens == SAMPLED_MAX_TOKENS, message
            assert message.content[0].type == "text" and message.content[0].text.startswith("<tool_call>["), message
            continue
        check_tool_use(message)
        whole += 1
    assert whole >= 1, messages
    assert len(check_tool_use(messages["tool"], forced="book_flight")) == 1
    check_message(messages["auto"])
    check_message(messages["result"])
