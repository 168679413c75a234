"""The bundled chat model through the official ``openai`` SDK against a real ``freight serve``.

The server runs with no ``[models]`` table at all, so what it serves is the out-of-the-box default:
all-MiniLM-L6-v2 and SmolLM2-135M-Instruct on llama.cpp with continuous batching. A chat batch and a
completions batch run to the end; every output body is parsed by the SDK's own response types, and
``seed``, ``stop``, ``max_tokens``, ``n`` and ``json_schema`` are checked line by line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from openai import OpenAI
from openai.types import Batch, Completion
from openai.types.chat import ChatCompletion
from servers import TERMINAL, FreightServer, jsonl_bytes, parse_jsonl, wait_for

CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
BATCH_TIMEOUT_S = 240

# No [models] table: the defaults are served.
CONFIG = """\
[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
"""

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(CONFIG)


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    c = c.with_options(timeout=120)
    yield c
    c.close()


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}], **body}}


def completion_line(custom_id: str, prompt: str | list[str], **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": CHAT_MODEL, "prompt": prompt, **body}}


def run_batch(client: OpenAI, lines: list[dict[str, Any]], endpoint: str) -> tuple[Batch, dict[str, dict[str, Any]]]:
    """Upload, create, wait; (the finished batch, custom_id -> output or error line)."""
    f = client.files.create(file=("input.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")

    def done() -> Batch | None:
        b = client.batches.retrieve(batch.id)
        return b if b.status in TERMINAL else None

    final: Batch = wait_for(done, BATCH_TIMEOUT_S, f"batch {batch.id}", every_s=0.25)
    by_id: dict[str, dict[str, Any]] = {}
    for file_id in (final.output_file_id, final.error_file_id):
        if file_id is not None:
            for line in parse_jsonl(client.files.content(file_id).content):
                assert line["custom_id"] not in by_id, f"{line['custom_id']} appears twice"
                by_id[line["custom_id"]] = line
    assert set(by_id) == {line["custom_id"] for line in lines}
    return final, by_id


def chat_body(line: dict[str, Any]) -> ChatCompletion:
    assert line["error"] is None and line["response"]["status_code"] == 200, line
    body = line["response"]["body"]
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    completion = ChatCompletion.model_validate(body)  # the SDK's own type for a chat completion
    assert completion.object == "chat.completion"
    assert completion.model == CHAT_MODEL
    assert completion.id.startswith("chatcmpl-") and completion.created > 1_700_000_000
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    for i, choice in enumerate(completion.choices):
        assert choice.index == i
        assert choice.message.role == "assistant"
        assert isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
    return completion


def completion_body(line: dict[str, Any]) -> Completion:
    assert line["error"] is None and line["response"]["status_code"] == 200, line
    completion = Completion.model_validate(line["response"]["body"])
    assert completion.object == "text_completion" and completion.model == CHAT_MODEL
    assert completion.id.startswith("cmpl-")
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    for i, choice in enumerate(completion.choices):
        assert choice.index == i and choice.finish_reason in ("stop", "length")
    return completion


# ---- what is served ----------------------------------------------------------------------------------------------


def test_models_lists_the_bundled_models(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {CHAT_MODEL, EMBEDDING_MODEL} <= set(models)
    for m in models.values():
        assert m.object == "model" and isinstance(m.created, int) and m.owned_by
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_realtime_endpoints_answer_for_the_chat_and_embedding_models(client: OpenAI) -> None:
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.content and chat.usage is not None and chat.usage.completion_tokens <= 8
    text = client.completions.create(model=CHAT_MODEL, prompt="The capital of France is", max_tokens=4,
                                     temperature=0)
    assert text.choices[0].text and text.usage is not None
    emb = client.embeddings.create(model=EMBEDDING_MODEL, input=["hello", "world"])
    assert [len(d.embedding) for d in emb.data] == [384, 384]


# ---- a chat batch ------------------------------------------------------------------------------------------------


def test_chat_batch(client: OpenAI) -> None:
    # Greedy text of one prompt, asked for in real time; its second word becomes a stop string in the batch.
    stop_prompt = "List five fruits, separated by commas."
    greedy = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": stop_prompt}],
                                            max_tokens=24, temperature=0).choices[0].message.content
    assert greedy is not None
    words = greedy.split()
    assert len(words) >= 3, greedy
    stop = words[1]

    sampled = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24}
    lines = [
        chat_line("plain", "What is the capital of France?", max_tokens=32, temperature=0),
        chat_line("seed-a", "Write one sentence about the sea.", seed=1234, **sampled),
        chat_line("seed-b", "Write one sentence about the sea.", seed=1234, **sampled),
        chat_line("short", "Tell me a long story about a dragon.", max_tokens=5, temperature=0),
        chat_line("max-completion", "Tell me a long story about a knight.", max_completion_tokens=7, temperature=0),
        chat_line("stop", stop_prompt, max_tokens=24, temperature=0, stop=[stop]),
        chat_line("n2", "Name a colour.", n=2, max_tokens=8, temperature=0.9, seed=5),
        chat_line("system", "Who are you?", max_tokens=16, temperature=0),
        chat_line("unsupported", "Hi", functions=[{"name": "f", "parameters": {}}]),  # the pre-tools API
    ]
    lines[-2]["body"]["messages"].insert(0, {"role": "system", "content": "You are a pirate."})
    lines += [chat_line(f"json-{i}", f"Invent a person #{i}. Answer in JSON.", max_tokens=96,
                        temperature=0 if i % 2 else 0.8, seed=i, response_format=JSON_SCHEMA) for i in range(4)]

    batch, out = run_batch(client, lines, "/v1/chat/completions")
    assert batch.status == "completed"
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (len(lines), len(lines) - 1, 1)

    bodies = {cid: chat_body(line) for cid, line in out.items() if cid != "unsupported"}
    assert "Paris" in (bodies["plain"].choices[0].message.content or "")

    # seed: the same seed and inputs give the same sampled text, whatever else ran in the batch.
    assert bodies["seed-a"].choices[0].message.content == bodies["seed-b"].choices[0].message.content

    # max_tokens / max_completion_tokens: cut at exactly that many tokens, finish_reason "length".
    for cid, limit in (("short", 5), ("max-completion", 7)):
        assert bodies[cid].choices[0].finish_reason == "length"
        assert bodies[cid].usage is not None and bodies[cid].usage.completion_tokens == limit

    # stop: the text ends before the stop string, which is not part of it; finish_reason "stop".
    stopped = bodies["stop"].choices[0]
    assert stopped.finish_reason == "stop"
    assert stop not in (stopped.message.content or "")
    assert greedy.startswith((stopped.message.content or "").rstrip())

    assert len(bodies["n2"].choices) == 2

    # An unsupported parameter fails that request alone, with a 400 in OpenAI's error shape.
    bad = out["unsupported"]
    assert bad["response"]["status_code"] == 400
    error = bad["response"]["body"]["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "functions"

    # json_schema: every output parses and validates against its schema.
    for i in range(4):
        choice = bodies[f"json-{i}"].choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_completions_batch(client: OpenAI) -> None:
    lines = [
        completion_line("one", "The capital of France is", max_tokens=8, temperature=0),
        completion_line("list", ["Once upon a time", "1, 2, 3,"], max_tokens=6, temperature=0),
        completion_line("default-max", "Water boils at", temperature=0),
        completion_line("seed-a", "My favourite animal is", max_tokens=12, temperature=1.0, seed=99),
        completion_line("seed-b", "My favourite animal is", max_tokens=12, temperature=1.0, seed=99),
        completion_line("stop", "1, 2, 3, 4,", max_tokens=16, temperature=0, stop=["7"]),
        completion_line("echo-unsupported", "Hi", echo=True, best_of=3),
    ]
    batch, out = run_batch(client, lines, "/v1/completions")
    assert batch.status == "completed"
    bodies = {cid: completion_body(line) for cid, line in out.items() if cid != "echo-unsupported"}

    assert len(bodies["list"].choices) == 2  # one choice per prompt
    assert all(c.finish_reason == "length" for c in bodies["list"].choices)
    default = bodies["default-max"]
    assert default.usage is not None and default.usage.completion_tokens <= 16  # OpenAI's default max_tokens
    assert bodies["seed-a"].choices[0].text == bodies["seed-b"].choices[0].text
    counting = bodies["stop"].choices[0]
    assert counting.finish_reason == "stop" and "7" not in counting.text, counting
    assert out["echo-unsupported"]["response"]["status_code"] == 400
