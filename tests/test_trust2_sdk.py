"""Issue 10 ("Trust, round two"), items 1, 2, 12 and 13, through the official openai and anthropic SDKs
against ``freight serve``: the nesting limit at every door, batches that cannot be validated end,
models say which endpoints they serve, and ``GET /v1/batches`` lists only OpenAI batches."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI
from openai.types import Batch
from servers import EMBEDDING_MODEL, SCRIPTED, TERMINAL, FreightServer, config_text, jsonl_bytes, request_line, wait_for

EMBEDDINGS = "/v1/embeddings"


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text(embeddings=True))


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    yield c
    c.close()


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def embedding_line(custom_id: str, body_input: Any = "hello") -> dict[str, Any]:
    return request_line(custom_id, url=EMBEDDINGS, body={"input": body_input})


def blob_path(server: FreightServer, file_id: str) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)) as c:
        (key,) = c.execute("SELECT blob_key FROM files WHERE id=?", (file_id,)).fetchone()
    return str(server.data_dir / "blobs" / key)


def wait_terminal(client: OpenAI, batch_id: str, timeout_s: float = 30) -> Batch:
    def terminal() -> Batch | None:
        b = client.batches.retrieve(batch_id)
        return b if b.status in TERMINAL else None

    batch: Batch = wait_for(terminal, timeout_s, f"batch {batch_id} to end", every_s=0.1)
    return batch


# ---- item 1: the nesting limit, and validation that cannot succeed --------------------------

def test_an_upload_with_a_deep_line_is_refused_with_its_line(client: OpenAI) -> None:
    data = jsonl_bytes([embedding_line("a"), embedding_line("b", deep(300))])
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("deep.jsonl", data), purpose="batch")
    assert caught.value.code == "invalid_file_format"
    assert "line 2: nests more than 128 levels deep" in caught.value.message


def test_a_stored_deep_line_fails_the_batch_with_its_line(server: FreightServer, client: OpenAI) -> None:
    f = client.files.create(file=("in.jsonl", jsonl_bytes([embedding_line("a"), embedding_line("b")])),
                            purpose="batch")
    # What a file stored by an earlier freight, whose upload did not check nesting, holds.
    path = blob_path(server, f.id)
    with open(path + ".new", "wb") as fh:
        fh.write(jsonl_bytes([embedding_line("a"), embedding_line("b", deep(300))]))
    os.replace(path + ".new", path)
    batch = client.batches.create(input_file_id=f.id, endpoint=EMBEDDINGS, completion_window="24h")
    done = wait_terminal(client, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    assert [(e.line, e.code) for e in done.errors.data] == [(2, "nesting_too_deep")]


def test_cancelling_a_batch_whose_validation_always_fails_ends_cancelled(server: FreightServer,
                                                                          client: OpenAI) -> None:
    f = client.files.create(file=("in.jsonl", jsonl_bytes([embedding_line("a")])), purpose="batch")
    path = blob_path(server, f.id)
    os.remove(path)
    os.mkdir(path)  # still "exists", but every read fails: validation raises on every try
    try:
        batch = client.batches.create(input_file_id=f.id, endpoint=EMBEDDINGS, completion_window="1s")
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        done = wait_terminal(client, batch.id)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.errors is not None and [e.code for e in done.errors.data] == ["internal_error"]
    assert done.request_counts is not None and done.request_counts.total == 0


def test_a_real_time_request_nested_too_deep_is_a_400(client: OpenAI, server: FreightServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=SCRIPTED, input=deep(300))
    assert caught.value.code == "nesting_too_deep"
    with Anthropic(base_url=server.url, api_key="x", max_retries=0) as a:
        with pytest.raises(anthropic.BadRequestError) as refused:
            a.messages.create(model=SCRIPTED, max_tokens=5, messages=[{"role": "user", "content": deep(300)}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# ---- item 2: Message Batch create, in Anthropic's error shape -------------------------------

def test_a_message_batch_with_a_deep_request_is_a_400_in_anthropics_shape(server: FreightServer) -> None:
    deep_params = {"model": SCRIPTED, "max_tokens": 5, "messages": [{"role": "user", "content": deep(300)}]}
    with Anthropic(base_url=server.url, api_key="x", max_retries=0) as a:
        with pytest.raises(anthropic.BadRequestError) as caught:
            a.messages.batches.create(requests=[
                {"custom_id": "ok", "params": {"model": SCRIPTED, "max_tokens": 5,
                                               "messages": [{"role": "user", "content": "hi"}]}},
                {"custom_id": "deep", "params": deep_params},  # type: ignore[typeddict-item]
            ])
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("requests.1 nests arrays and objects more than 128 levels")


# ---- item 12: which endpoints a model serves ------------------------------------------------

def endpoints_of(model: Any) -> list[str]:
    extra = model.model_extra or {}
    assert set(extra) == {"freight"}, "freight's extension fields live under the one key 'freight'"
    endpoints: list[str] = extra["freight"]["endpoints"]
    return endpoints


def test_models_say_which_endpoints_they_serve(client: OpenAI) -> None:
    listed = {m.id: endpoints_of(m) for m in client.models.list()}
    assert listed[SCRIPTED] == ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                                "/v1/responses"]
    assert listed[EMBEDDING_MODEL] == ["/v1/embeddings"]
    for model_id, endpoints in listed.items():
        assert endpoints_of(client.models.retrieve(model_id)) == endpoints


def test_a_model_refuses_the_endpoints_it_does_not_list(client: OpenAI) -> None:
    assert "/v1/chat/completions" not in endpoints_of(client.models.retrieve(EMBEDDING_MODEL))
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"


# ---- item 13: GET /v1/batches lists OpenAI batches only -------------------------------------

@pytest.fixture(scope="module")
def listing(make_server: Callable[..., FreightServer]) -> FreightServer:
    """A server of its own: the list is the whole project's."""
    return make_server(config_text())


def test_the_batch_list_holds_only_openai_batches_and_pages_through_them(listing: FreightServer) -> None:
    client = listing.client()
    a = Anthropic(base_url=listing.url, api_key="x", max_retries=0)
    f = client.files.create(file=("in.jsonl", jsonl_bytes([request_line("a")])), purpose="batch")
    openai_batches: list[str] = []  # oldest first
    message_batches: list[str] = []
    for step in "MMOMOMOMMO":  # interleaved; the last OpenAI batch has no metadata
        if step == "O":
            meta = {"metadata": {"n": str(len(openai_batches))}} if len(openai_batches) < 3 else {}
            openai_batches.append(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                        completion_window="24h", **meta).id)  # type: ignore[arg-type]
        else:
            message_batches.append(a.messages.batches.create(requests=[{"custom_id": "m", "params": {
                "model": SCRIPTED, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}]).id)
    newest_first = openai_batches[::-1]

    # the SDK's own auto-pagination, page sizes 1 to 5
    for size in range(1, 6):
        assert [b.id for b in client.batches.list(limit=size)] == newest_first, size
    every = list(client.batches.list(limit=100))
    assert all(b.endpoint != "/v1/messages" for b in every)
    by_id = {b.id: b for b in every}
    assert by_id[openai_batches[0]].metadata == {"n": "0"}
    assert by_id[openai_batches[3]].metadata is None  # none given: null, as OpenAI answers

    # the page fields, by hand, with every cursor
    for size in (1, 2, 3):
        cursor: str | None = None
        seen: list[str] = []
        while True:
            params: dict[str, Any] = {"limit": size, **({"after": cursor} if cursor else {})}
            page = httpx.get(listing.base_url + "/batches", params=params, timeout=30).json()
            ids = [b["id"] for b in page["data"]]
            assert page["first_id"] == (ids[0] if ids else None) and page["last_id"] == (ids[-1] if ids else None)
            seen += ids
            assert page["has_more"] == (len(seen) < len(newest_first)), (size, seen)
            if not page["has_more"]:
                break
            cursor = page["last_id"]
        assert seen == newest_first

    # a Message Batch is still reachable by its id (metadata null: it has none), and works as a cursor
    def as_batch_id(message_batch_id: str) -> str:
        return "batch_" + message_batch_id.removeprefix("msgbatch_")

    got = client.batches.retrieve(as_batch_id(message_batches[0]))
    assert got.endpoint == "/v1/messages" and got.metadata is None
    assert [b.id for b in client.batches.list(after=as_batch_id(message_batches[2]))] == [openai_batches[0]]
    assert [b.id for b in client.batches.list(after=as_batch_id(message_batches[0]))] == []
    client.close()
    a.close()
