"""Unit tests of the Anthropic pieces: the streaming body splitter, Messages ⇄ chat translation,
result lines, the adapter backend and the ``[anthropic]`` settings."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.backends.messages_adapter import MessagesAdapter
from freight.backends.scripted import ScriptedBackend
from freight.config import load_settings
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.wire.anthropic import result_line
from freight.wire.json_stream import ArrayFieldSplitter, JsonStreamError
from freight.wire.messages_chat import Untranslatable, chat_to_message, messages_to_chat

# ---- the splitter ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from('[]{}",\\:')),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def split(data: bytes, cuts: list[int], name: str = "requests") -> tuple[list[Any], ArrayFieldSplitter]:
    splitter = ArrayFieldSplitter(name)
    out: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)):
        out += splitter.feed(data[start:cut])
        start = cut
    out += splitter.feed(data[start:])
    out += splitter.finish()
    return [json.loads(x) for x in out], splitter


@settings(max_examples=60, deadline=None)
@given(elements=st.lists(json_values, max_size=6), other=json_values, cuts=st.lists(st.integers(0, 400), max_size=8),
       ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_splitter_yields_exactly_the_elements(elements: list[Any], other: Any, cuts: list[int], ascii_only: bool,
                                               indent: int | None) -> None:
    data = json.dumps({"x": other, "requests": elements}, ensure_ascii=ascii_only, indent=indent).encode()
    got, splitter = split(data, cuts)
    assert got == elements
    assert json.loads(splitter.others["x"]) == other


@pytest.mark.parametrize("body", [b"", b"[]", b'{"requests": 1}', b'{"requests": [1,]}', b'{"requests": [{}',
                                  b'{"requests": []} {}', b'{"requests": [], "requests": []}', b'{requests: []}',
                                  b'{"requests" []}', b'{"requests": [{}] ]'])
def test_splitter_refuses_what_is_not_an_object_with_an_array(body: bytes) -> None:
    with pytest.raises(JsonStreamError):
        split(body, [1, 5])


def test_splitter_bounds_an_element() -> None:
    splitter = ArrayFieldSplitter("requests", max_element_bytes=100)
    splitter.feed(b'{"requests": [{"a": "' + b"x" * 50)
    with pytest.raises(JsonStreamError):
        splitter.feed(b"x" * 60)
    assert splitter.too_large


# ---- translation -----------------------------------------------------------------------------

def test_messages_translate_to_chat() -> None:
    chat = messages_to_chat({
        "model": "m", "max_tokens": 7, "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "text", "text": "r"}]},
            {"role": "user", "content": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}],
        "stop_sequences": ["X"], "temperature": 0.5, "top_p": 1, "top_k": 3, "metadata": {"user_id": "u"},
        "service_tier": "auto", "tools": [], "thinking": {"type": "disabled"}, "stream": False})
    assert chat == {"model": "m", "max_tokens": 7, "messages": [
        {"role": "system", "content": "a\nb"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "r"}, {"role": "user", "content": "s"}],
        "stop": ["X"], "temperature": 0.5, "top_p": 1, "top_k": 3, "user": "u"}


@pytest.mark.parametrize(("params", "starts"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens:"),
    ({"max_tokens": 5}, "messages: Field required"),
    ({"max_tokens": 5, "messages": []}, "messages: List should have at least 1 item"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}, "messages.0.content.0.type:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": []}]}]},
     "messages.0.content.0.citations:"),
    ({"max_tokens": 5, "messages": [{"role": "assistant", "content": "prefill"}]}, "messages.0: a final assistant"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t"}]},
     "tools.0.input_schema:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled"}}, "thinking:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stream": True}, "stream:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "metadata": {"other": 1}}, "metadata.other:"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "container": "c"}, "container:"),
    ({"max_tokens": 5, "system": [{"type": "document"}], "messages": [{"role": "user", "content": "x"}]}, "system.0"),
])
def test_what_does_not_translate_is_refused(params: dict[str, Any], starts: str) -> None:
    with pytest.raises(Untranslatable) as e:
        messages_to_chat({"model": "m", **params})
    assert str(e.value).startswith(starts), str(e.value)


def chat(content: Any, finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                         **choice}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}


def test_chat_answers_become_messages() -> None:
    m = chat_to_message(chat("hi"), "m", None)
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant" and m["model"] == "m"
    assert m["content"] == [{"type": "text", "text": "hi"}]
    assert (m["stop_reason"], m["stop_sequence"], m["usage"]) == ("end_turn", None,
                                                                  {"input_tokens": 9, "output_tokens": 4})
    assert chat_to_message(chat("hi", "length"), "m", None)["stop_reason"] == "max_tokens"
    stopped = chat_to_message(chat("hi", stop_reason="END"), "m", ["END"])
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    assert chat_to_message(chat("hi", stop_reason="END"), "m", None)["stop_reason"] == "end_turn"
    assert chat_to_message(chat(""), "m", None)["content"] == []
    refused = chat_to_message({"choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]},
                              "m", None)
    assert refused["stop_reason"] == "refusal" and refused["usage"] == {"input_tokens": 0, "output_tokens": 0}


# ---- result lines -----------------------------------------------------------------------------

def line(result: Result) -> dict[str, Any]:
    data = result_line("c-1", result)
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and data.isascii()
    parsed: dict[str, Any] = json.loads(data)
    assert parsed["custom_id"] == "c-1"
    return parsed["result"]  # type: ignore[no-any-return]


def test_result_lines() -> None:
    assert line(Result(200, b'{"type":"message","content":[{"type":"text","text":"\xc3\xa9\xe2\x80\xa8"}]}')) == {
        "type": "succeeded", "message": {"type": "message", "content": [{"type": "text", "text": "é\u2028"}]}}
    assert line(Result(error_code="batch_cancelled", error_message="x")) == {"type": "canceled"}
    assert line(Result(error_code="batch_expired", error_message="x")) == {"type": "expired"}
    assert line(Result(400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}',
                       request_id="req_1")) == {"type": "errored", "error": {
                           "type": "error", "error": {"type": "invalid_request_error", "message": "bad"},
                           "request_id": "req_1"}}
    openai_style = line(Result(429, b'{"error":{"message":"slow down","type":"x","param":null,"code":null}}'))
    assert openai_style["error"]["error"] == {"type": "rate_limit_error", "message": "slow down"}
    gone = line(Result(error_code="attempts_exhausted", error_message="no answer"))
    assert gone["error"]["error"]["type"] == "api_error" and "no answer" in gone["error"]["error"]["message"]


# ---- the adapter -----------------------------------------------------------------------------

def test_the_adapter_serves_messages_for_chat_models_only() -> None:
    adapter = MessagesAdapter(ScriptedBackend())
    (info,) = adapter.models()
    assert "/v1/messages" in info.endpoints and "/v1/embeddings" in info.endpoints
    assert adapter.chunk_size == 16 and adapter.executed == 0  # the inner backend's attributes
    bodies = [{"model": "freight-scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "a b"}]},
              {"model": "freight-scripted", "max_tokens": 5, "messages": [{"role": "user", "content": [
                  {"type": "document"}]}]},
              {"model": "freight-scripted", "max_tokens": 5, "messages": [
                  {"role": "user", "content": '#script {"status": 429}'}]},
              {"model": "freight-scripted", "max_tokens": 5, "messages": [
                  {"role": "user", "content": '#script {"status": 0}'}]}]
    ok, untranslatable, limited, failed = asyncio.run(adapter.execute("/v1/messages", bodies))
    assert isinstance(ok, Result) and ok.status_code == 200 and ok.body is not None
    assert json.loads(ok.body)["content"] == [{"type": "text", "text": "echo: a b"}]
    assert isinstance(untranslatable, Result) and untranslatable.status_code == 400
    assert isinstance(limited, Result) and limited.status_code == 429 and limited.body is not None
    assert json.loads(limited.body)["error"]["type"] == "rate_limit_error"  # still retried by the engine
    assert isinstance(failed, Failure)
    assert adapter.executed == 3, "the untranslatable request never reached the model"
    plain = asyncio.run(adapter.execute("/v1/chat/completions", bodies[:1]))[0]
    assert isinstance(plain, Result) and plain.body is not None and "echo" in json.loads(plain.body)


# ---- settings --------------------------------------------------------------------------------

def test_anthropic_settings(tmp_path: Path) -> None:
    defaults = load_settings(env={}, data_dir=tmp_path).anthropic
    assert (defaults.max_requests, defaults.max_bytes, defaults.window_s) == (100_000, 256 * 1024 * 1024, 86400)
    config = tmp_path / "freight.toml"
    config.write_text('[anthropic]\nbatch_window = "90s"\nmax_batch_requests = 10\n')
    custom = load_settings(config, env={}).anthropic
    assert (custom.window_s, custom.batch_window, custom.max_requests) == (90, "90s", 10)
    config.write_text('[anthropic]\nbatch_windw = "90s"\n')
    with pytest.raises(ConfigError):
        load_settings(config, env={})
    config.write_text('[anthropic]\nbatch_window = "soon"\n')
    with pytest.raises(ConfigError):
        load_settings(config, env={})
