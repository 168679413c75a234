"""A JSON schema from a user never makes the server fetch a URL or read a file.

Schemas arrive in a batch's ``output_schema``, a line's ``response_format``, a forced tool's parameters and
real-time requests. The validator used to follow a ``$ref`` to any URL (urllib, no timeout, on the event
loop) or ``file://`` path, and an error message could quote what it read. Now a reference is resolved only
within the schema: one that points outside is a 400 at create, or the request's own 400 line (never sent),
and the answer check itself looks nothing up outside the schema.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI
from servers import SCRIPTED, TERMINAL, FreightServer, config_text, jsonl_bytes, parse_jsonl, wait_for

from freight.services.outputs import Check, check_answer, ref_outside

CHAT = "/v1/chat/completions"


class Catcher:
    """An HTTP server on loopback that serves a schema and counts who asked for it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = b'{"type": "integer"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def catcher() -> Iterator[Catcher]:
    c = Catcher()
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(make_server: Callable[..., FreightServer]) -> Iterator[OpenAI]:
    c = make_server(config_text()).client()
    yield c
    c.close()


def remote(catcher: Catcher, what: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"$ref": f"{catcher.url}/{what}.json"}}}


def chat(cid: str, reply: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": SCRIPTED, "messages": [{"role": "user", "content": "JSON"}],
                            "script": {"reply": reply}}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return {"custom_id": cid, "method": "POST", "url": CHAT, "body": body}


# ---- which references point outside --------------------------------------------------------------

@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}},
    {"$defs": {"n": {"$anchor": "num", "type": "integer"}}, "items": {"$ref": "#num"}},
    {"$id": "https://example.test/root", "$defs": {"s": {"$id": "sub", "type": "string"}},
     "properties": {"a": {"$ref": "sub"}, "b": {"$ref": "https://example.test/sub"}}},
    {"enum": [{"$ref": "http://127.0.0.1:9/data-not-schema"}], "const": {"$ref": "file:///etc/passwd"}},
    {"properties": {"$ref": {"type": "string"}}},  # a property named "$ref"
    {"$ref": "#"},
])
def test_references_within_the_schema_are_fine(schema: dict[str, Any]) -> None:
    assert ref_outside(schema) is None


@pytest.mark.parametrize(("schema", "ref"), [
    ({"properties": {"a": {"$ref": "http://169.254.169.254/latest/meta-data"}}}, "http://169.254.169.254/latest/meta-data"),
    ({"items": [{"$ref": "file:///etc/passwd"}]}, "file:///etc/passwd"),
    ({"$ref": "other.json#/x"}, "other.json#/x"),
    ({"$id": "https://example.test/root", "properties": {"a": {"$ref": "elsewhere"}}}, "elsewhere"),
    ({"$dynamicRef": "https://example.test/meta#node"}, "https://example.test/meta#node"),
])
def test_a_reference_to_a_url_or_a_file_points_outside(schema: dict[str, Any], ref: str) -> None:
    assert ref_outside(schema) == ref


_keys = st.sampled_from(["type", "properties", "items", "allOf", "anyOf", "x", "$defs"])
_local = st.builds(lambda p: {"$ref": "#/" + p}, st.text("abcdef/", max_size=8))
_schemas = st.recursive(st.one_of(st.booleans(), st.integers(), _local),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(_keys, inner, max_size=3)), max_leaves=12)


@given(_schemas, st.integers(min_value=0, max_value=50))
def test_one_outside_reference_anywhere_is_found_and_local_ones_never_are(schema: Any, where: int) -> None:
    root = {"anyOf": [schema]}
    assert ref_outside(root) is None
    # Put a URL reference into the where-th dict of the schema (or at the top): it is the one found.
    dicts: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            dicts.append(node)
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(root)
    target = dicts[where % len(dicts)]
    target["$ref"] = "http://127.0.0.1:9/x.json"
    assert ref_outside(root) == "http://127.0.0.1:9/x.json"


def test_the_answer_check_looks_nothing_up_outside_the_schema(catcher: Catcher, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"const": "TOPSECRET-VALUE"}')
    body = b'{"choices": [{"message": {"role": "assistant", "content": "{\\"a\\": 1}"}}]}'
    for schema in (remote(catcher, "direct"), {"properties": {"a": {"$ref": secret.as_uri()}}}):
        problem = check_answer(CHAT, body, Check(schema=schema))
        assert problem is not None and "points outside the schema" in problem
        assert "TOPSECRET" not in problem
    assert catcher.hits == []


# ---- through the server ---------------------------------------------------------------------------

def test_an_output_schema_that_refers_outside_itself_is_a_400_and_nothing_is_fetched(
        client: OpenAI, catcher: Catcher) -> None:
    f = client.files.create(file=("in.jsonl", jsonl_bytes([chat("x", "{}")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"output_schema": remote(catcher, "batch")})
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "output_schema" and body["code"] == "invalid_value"
    assert "points outside the schema" in body["message"]
    assert catcher.hits == []


def test_a_line_whose_schema_refers_outside_itself_gets_its_own_400_and_the_others_run(
        client: OpenAI, catcher: Catcher, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"const": "TOPSECRET-VALUE"}')
    lines = [chat("url", '{"a": 1}', remote(catcher, "line")),
             chat("file", '{"a": 1}', {"properties": {"a": {"$ref": secret.as_uri()}}}),
             chat("fine", '{"a": 1}', {"type": "object", "properties": {"a": {"type": "integer"}}})]
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    created = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(created.id)).status in TERMINAL and b, 60, "the batch")
    assert batch.status == "completed"
    assert batch.request_counts is not None and (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    rows = {r["custom_id"]: r for fid in (batch.output_file_id, batch.error_file_id) if fid
            for r in parse_jsonl(client.files.content(fid).content)}
    assert rows["fine"]["response"]["status_code"] == 200
    for cid in ("url", "file"):
        response = rows[cid]["response"]
        assert response["status_code"] == 400
        assert response["body"]["error"]["type"] == "invalid_request_error"
        assert "points outside the schema" in response["body"]["error"]["message"]
    assert "TOPSECRET" not in str(rows)
    assert catcher.hits == []
    assert batch.usage is not None and batch.usage.total_tokens > 0  # (the fine one's)


def test_a_real_time_request_whose_schema_refers_outside_itself_is_a_400(client: OpenAI, catcher: Catcher) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": remote(catcher, "rt")}},
            extra_body={"script": {"reply": '{"a": 1}'}})
    assert "points outside the schema" in str(info.value.body)
    assert catcher.hits == []
