"""Guarantee 2's retry half: a create whose response was lost, retried with an ``Idempotency-Key``,
never makes a second file or batch. Through the official SDK (``extra_headers``), including its own
automatic retry after a connection that dies before the response arrives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from servers import TERMINAL, FreightServer, config_text, jsonl_bytes, request_line, wait_for

CHAT = "/v1/chat/completions"
#: The HTTP library the SDK is built on (httpx, or its successor in newer SDKs).
sdk_http: Any = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text(), start=False).start()


class LoseResponses(sdk_http.HTTPTransport):  # type: ignore[misc]
    """Delivers requests, but loses the response of the first of each (method, path) in ``lose``:
    the server did the work, the client sees a dropped connection (and the SDK retries)."""

    def __init__(self, lose: set[tuple[str, str]]):
        super().__init__()
        self.lose = set(lose)
        self.lost: list[tuple[str, str]] = []
        self.sent: list[tuple[str, str, str | None]] = []

    def handle_request(self, request: Any) -> Any:
        response = super().handle_request(request)
        where = (request.method, request.url.path)
        self.sent.append((*where, request.headers.get("idempotency-key")))
        if where in self.lose:
            self.lose.discard(where)
            response.read()
            response.close()
            self.lost.append(where)
            raise sdk_http.ReadError("connection reset before the response arrived", request=request)
        return response


def sdk(server: FreightServer, transport: Any = None) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(transport=transport) if transport is not None else None
    return openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2, http_client=http,
                         _strict_response_validation=True)


@pytest.fixture
def client(server: FreightServer) -> Iterator[openai.OpenAI]:
    with sdk(server) as c:
        yield c


def counts(server: FreightServer) -> tuple[int, int]:
    with httpx.Client(base_url=server.base_url) as c:
        batches = c.get("/batches", params={"limit": 100}).json()["data"]
        files = [f for f in c.get("/files").json()["data"] if f["purpose"] == "batch"]
    return len(batches), len(files)


def lines(n: int, tag: str) -> bytes:
    return jsonl_bytes([request_line(f"{tag}{i}") for i in range(n)])


def test_the_same_key_gets_the_same_file_and_batch(server: FreightServer, client: openai.OpenAI) -> None:
    before = counts(server)
    f1 = client.files.create(file=("a.jsonl", lines(3, "a")), purpose="batch",
                             extra_headers={"Idempotency-Key": "file-1"})
    f2 = client.files.create(file=("a.jsonl", lines(3, "a")), purpose="batch",
                             extra_headers={"Idempotency-Key": "file-1"})
    assert f1.id == f2.id and f1 == f2
    # the key names the upload, whatever is sent again under it
    f3 = client.files.create(file=("b.jsonl", lines(5, "b")), purpose="batch",
                             extra_headers={"Idempotency-Key": "file-1"})
    assert f3.id == f1.id and f3.bytes == f1.bytes
    b1 = client.batches.create(input_file_id=f1.id, endpoint=CHAT, completion_window="24h",
                               extra_headers={"Idempotency-Key": "batch-1"})
    b2 = client.batches.create(input_file_id=f1.id, endpoint=CHAT, completion_window="24h",
                               extra_headers={"Idempotency-Key": "batch-1"})
    assert b1.id == b2.id
    other = client.batches.create(input_file_id=f1.id, endpoint=CHAT, completion_window="24h",
                                  extra_headers={"Idempotency-Key": "batch-2"})
    assert other.id != b1.id
    assert counts(server) == (before[0] + 2, before[1] + 1)
    done = wait_for(lambda: (b := client.batches.retrieve(b1.id)).status in TERMINAL and b, 30, "batch")
    assert done.request_counts.total == 3
    # the replay still answers after the batch finished, with the batch as it is now
    again = client.batches.create(input_file_id=f1.id, endpoint=CHAT, completion_window="24h",
                                  extra_headers={"Idempotency-Key": "batch-1"})
    assert again.id == b1.id and again.status == done.status


def test_a_lost_response_retried_by_the_sdk_makes_no_duplicate(server: FreightServer) -> None:
    before = counts(server)
    transport = LoseResponses({("POST", "/v1/files"), ("POST", "/v1/batches")})
    with sdk(server, transport) as client:
        f = client.files.create(file=("lost.jsonl", lines(4, "l")), purpose="batch",
                                extra_headers={"Idempotency-Key": "lost-file"})
        b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                                  extra_headers={"Idempotency-Key": "lost-batch"})
    assert transport.lost == [("POST", "/v1/files"), ("POST", "/v1/batches")], "the responses were lost"
    posts = [s for s in transport.sent if s[0] == "POST"]
    assert posts == [("POST", "/v1/files", "lost-file")] * 2 + [("POST", "/v1/batches", "lost-batch")] * 2, \
        "the SDK sent each create twice, with the same key"
    assert counts(server) == (before[0] + 1, before[1] + 1), "one file and one batch, not two"
    with sdk(server) as client:
        done = wait_for(lambda: (x := client.batches.retrieve(b.id)).status in TERMINAL and x, 30, "batch")
    assert done.status == "completed" and done.request_counts.total == 4


def test_without_a_key_a_lost_response_does_make_a_second_batch(server: FreightServer) -> None:
    """What docs/guarantees.md says happens without the header (as with OpenAI)."""
    with sdk(server) as client:
        f = client.files.create(file=("nokey.jsonl", lines(2, "n")), purpose="batch")
    before = counts(server)
    transport = LoseResponses({("POST", "/v1/batches")})
    with sdk(server, transport) as client:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert counts(server)[0] == before[0] + 2


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_a_malformed_key_is_a_400(server: FreightServer, key: str) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        response = c.post("/batches", headers={"Idempotency-Key": key},
                          json={"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"})
        error: dict[str, Any] = response.json()["error"]
        assert response.status_code == 400 and error["param"] == "Idempotency-Key"
        response = c.post("/files", headers={"Idempotency-Key": key}, files={"file": ("a.jsonl", b"{}\n")},
                          data={"purpose": "batch"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "Idempotency-Key"
