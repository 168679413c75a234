"""Outputs validated before they are written: through a real ``freight serve`` and the openai SDK.

The scripted model answers ``script.reply``; the OpenAI-compatible upstream simulator answers plain
text whatever the request asks for (so a ``json_schema`` request gets an invalid answer every time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI
from servers import SCRIPTED, TERMINAL, FreightServer, config_text, jsonl_bytes, parse_jsonl, wait_for

from freight.testing.upstream import Upstream, UpstreamConfig

CHAT = "/v1/chat/completions"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(UpstreamConfig()) as up:
        yield up


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer], upstream: Upstream) -> FreightServer:
    return make_server(config_text(extra=f"""
[models."sim"]
backend = "openai"
base_url = "{upstream.base_url}"
upstream_model = "sim-chat"
price = {{ input_per_mtok = 1000, output_per_mtok = 1000 }}
"""))


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    yield c
    c.close()


def run(client: OpenAI, lines: list[dict[str, Any]], **extra_body: Any) -> tuple[openai.types.Batch,
                                                                                  dict[str, dict[str, Any]]]:
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    created = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                                    extra_body=extra_body or None)
    batch: openai.types.Batch = wait_for(
        lambda: (b := client.batches.retrieve(created.id)).status in TERMINAL and b, 60, "the batch")
    by_id: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for row in parse_jsonl(client.files.content(file_id).content):
                by_id[row["custom_id"]] = row
    return batch, by_id


def chat(cid: str, model: str = SCRIPTED, reply: str | None = None, **body: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "give me JSON"}], **body}
    if reply is not None:
        b["script"] = {"reply": reply}
    return {"custom_id": cid, "method": "POST", "url": CHAT, "body": b}


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}


def test_plain_text_from_an_upstream_to_a_json_schema_request_is_output_invalid(client: OpenAI,
                                                                                 upstream: Upstream) -> None:
    upstream.reset_stats()
    batch, rows = run(client, [chat("r0", "sim", response_format=json_schema_format(SCHEMA))])
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.failed == 1
    err = rows["r0"]
    assert err["response"] is None and err["error"]["code"] == "output_invalid"
    assert "is not JSON" in err["error"]["message"] and "3 tries" in err["error"]["message"]
    assert batch.model_extra is not None and batch.model_extra["freight"]["invalid_outputs"] == 3
    # Every try was a real call, and all of them are in the usage and the cost.
    assert upstream.stats().count("ok") == 3
    assert batch.usage is not None and batch.usage.output_tokens > 0
    assert batch.model_extra["freight"]["cost_usd"] == pytest.approx(batch.usage.total_tokens * 1000 / 1e6)


def test_answers_are_checked_against_the_requested_schema(client: OpenAI) -> None:
    lines = [
        chat("good", reply='{"a": 1}', response_format=json_schema_format(SCHEMA)),
        chat("wrong-type", reply='{"a": "one"}', response_format=json_schema_format(SCHEMA)),
        chat("not-json", reply="sure! here it is", response_format={"type": "json_object"}),
        chat("no-check", reply="plain text is fine here"),
    ]
    batch, rows = run(client, lines)
    assert rows["good"]["response"]["status_code"] == 200
    assert rows["no-check"]["response"]["status_code"] == 200
    assert rows["wrong-type"]["error"]["code"] == "output_invalid"
    assert "at 'a'" in rows["wrong-type"]["error"]["message"]
    assert rows["not-json"]["error"]["code"] == "output_invalid"
    assert batch.model_extra is not None and batch.model_extra["freight"]["invalid_outputs"] == 6


def test_a_forced_tool_call_is_checked_against_the_tool_parameters(client: OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    choice = {"type": "function", "function": {"name": "f"}}
    _, rows = run(client, [chat("t", reply="no tool call here", tools=tools, tool_choice=choice)])
    assert rows["t"]["error"]["code"] == "output_invalid"
    assert "arguments of f" in rows["t"]["error"]["message"]


def test_the_batch_output_schema_checks_every_answer(client: OpenAI) -> None:
    batch, rows = run(client, [chat("ok", reply='{"a": 5}'), chat("bad", reply='{"b": 5}')], output_schema=SCHEMA)
    assert batch.model_extra is not None and batch.model_extra["freight"]["output_schema"] == SCHEMA
    assert rows["ok"]["response"]["status_code"] == 200
    # The internal key that carries the schema never reaches the model (the scripted model echoes its body).
    assert "__freight_output_schema" not in str(rows["ok"]["response"]["body"])
    assert rows["bad"]["error"]["code"] == "output_invalid"
    assert "(output_schema)" in rows["bad"]["error"]["message"] and "'a' is a required property" in \
        rows["bad"]["error"]["message"]


@pytest.mark.parametrize("schema", [[1], {"type": 12}])
def test_an_invalid_output_schema_is_a_400(client: OpenAI, schema: Any) -> None:
    f = client.files.create(file=("in.jsonl", jsonl_bytes([chat("x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"output_schema": schema})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "output_schema"


def test_the_real_time_endpoint_answers_an_invalid_answer_with_an_error(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_object"}, extra_body={"script": {"reply": "not json"}})
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "output_invalid"
