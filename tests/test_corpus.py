"""Every malformed or hostile input of tests/corpus gets its documented error, and no 5xx, ever.

The corpus files and what each must get are in tests/corpus/manifest.json (made by
tests/corpus/make_corpus.py); the few cases too big for git are made here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import EMBEDDING_MODEL, TERMINAL, FreightServer, config_text, parse_jsonl

CORPUS = Path(__file__).parent / "corpus"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
LIMITS = """
[limits]
completion_window_min = "1s"
max_line_bytes = 1048576
max_input_bytes = 12582912
max_lines = 300
"""


class Recorder:
    """Every response the tests get, to check at the end that none was a 5xx."""

    def __init__(self) -> None:
        self.statuses: list[tuple[int, str]] = []

    def hook(self, response: httpx.Response) -> None:
        self.statuses.append((response.status_code, f"{response.request.method} {response.request.url.path}"))


RECORDER = Recorder()


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    text = config_text(embeddings=True).replace('[limits]\ncompletion_window_min = "1s"\n', "") + LIMITS
    return make_server(text)


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(event_hooks={"response": [RECORDER.hook]})
    with openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, http_client=http,
                       _strict_response_validation=True) as c:
        yield c


@pytest.fixture(scope="module")
def raw(server: FreightServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, event_hooks={"response": [RECORDER.hook]}, timeout=60) as c:
        yield c


def generated(name: str) -> bytes:
    line = json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": EMBEDDING_MODEL, "input": "x"}}).encode() + b"\n"
    if name == "line_over_limit":
        big = json.dumps({"custom_id": "big", "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": EMBEDDING_MODEL, "input": "y" * 2_000_000}}).encode()
        return line + big + b"\n"
    if name == "ten_mb_line":
        return b'{"custom_id": "huge", "pad": "' + b"z" * 10_000_000 + b'"}\n'
    if name == "file_over_limit":
        return line * (13_000_000 // len(line))
    if name == "too_many_lines":
        return b"".join(line.replace(b'"ok"', f'"r{i}"'.encode()) for i in range(301))
    raise KeyError(name)


def content(name: str) -> bytes:
    if "generated" in MANIFEST[name]:
        return generated(name)
    return (CORPUS / f"{name}.jsonl").read_bytes()


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"{batch_id} not finished in {timeout_s}s")


def test_the_corpus_is_big_enough() -> None:
    assert len(MANIFEST) >= 40
    assert {e["stage"] for e in MANIFEST.values()} == {"upload", "batch", "ok"}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_case(name: str, client: openai.OpenAI) -> None:
    expected = MANIFEST[name]
    data = content(name)
    if expected["stage"] == "upload":
        with pytest.raises(openai.APIStatusError) as info:
            client.files.create(file=(f"{name}.jsonl", data), purpose="batch")
        err = info.value
        assert err.status_code == expected["status"], err
        assert err.code == expected["code"], err
        for line in expected["lines"]:
            assert f"line {line}:" in err.message, (line, err.message)
        assert f"line {max(expected['lines'], default=0) + 1}:" not in err.message or len(expected["lines"]) >= 20
        return
    f = client.files.create(file=(f"{name}.jsonl", data), purpose="batch")
    batch = wait_terminal(client, client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                                        completion_window="24h").id)
    if expected["stage"] == "batch":
        assert batch.status == "failed", batch
        got = [[e.line, e.code, e.param] for e in batch.errors.data]
        assert got == expected["errors"]
        assert all(e.message for e in batch.errors.data)
        assert batch.output_file_id is None and batch.error_file_id is None
        return
    assert batch.status == "completed", batch
    out = parse_jsonl(client.files.content(batch.output_file_id).content) if batch.output_file_id else []
    err_lines = parse_jsonl(client.files.content(batch.error_file_id).content) if batch.error_file_id else []
    assert [line["custom_id"] for line in out] == expected["succeeded"]
    assert [line["custom_id"] for line in err_lines] == expected["refused"]
    for line in err_lines:
        assert line["response"]["status_code"] == 400 and line["error"] is None
        assert line["response"]["body"]["error"]["message"]
    assert batch.request_counts.total == len(out) + len(err_lines)


def test_nothing_is_left_of_refused_uploads(server: FreightServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError):
        client.files.create(file=("big.jsonl", generated("file_over_limit")), purpose="batch")
    leftovers = [p.name for p in (server.data_dir / "blobs").iterdir() if ".tmp" in p.name]
    assert leftovers == []
    listed = {f.filename for f in client.files.list()}
    assert not any(name.startswith(("broken_json", "file_over_limit", "empty_file")) for name in listed)


# ---- hostile requests to the API itself --------------------------------------------------------


def envelope(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("POST", "/files", {"data": {"purpose": "batch"}, "files": {"other": ("x", b"y")}}, 400,
     "missing_required_parameter"),
    ("POST", "/files", {"files": {"file": ("a.jsonl", b'{"a": 1}\n')}}, 400, "missing_required_parameter"),
    ("POST", "/files", {"data": {"purpose": "nonsense"}, "files": {"file": ("a.jsonl", b"{}\n")}}, 400,
     "invalid_value"),
    ("POST", "/files", {"content": b"not multipart", "headers": {"content-type": "text/plain"}}, 400,
     "invalid_content_type"),
    ("POST", "/files", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400,
     "invalid_content_type"),
    ("POST", "/batches", {"content": b"{not json"}, 400, "invalid_json"),
    ("POST", "/batches", {"json": [1, 2]}, 400, "invalid_request"),
    ("POST", "/batches", {"json": {"input_file_id": "file-../../etc", "endpoint": "/v1/embeddings",
                                   "completion_window": "24h"}}, 400, "invalid_value"),
    ("POST", "/batches", {"json": {"input_file_id": 12, "endpoint": "/v1/embeddings",
                                   "completion_window": "24h"}}, 400, "invalid_type"),
    ("POST", "/batches", {"json": {"endpoint": "/v1/embeddings", "completion_window": "24h"}}, 400,
     "missing_required_parameter"),
    ("POST", "/batches", {"json": {"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                   "completion_window": "24h", "metadata": {f"k{i}": "v" for i in range(17)}}},
     400, "invalid_value"),
    ("POST", "/batches", {"json": {"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                   "completion_window": "24h", "metadata": {"k" * 65: "v"}}}, 400, "invalid_value"),
    ("POST", "/batches", {"json": {"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                   "completion_window": "24h", "metadata": {"k": "v" * 513}}}, 400, "invalid_value"),
    ("POST", "/batches", {"json": {"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                   "completion_window": "24h", "metadata": {"k": ["a"]}}}, 400, "invalid_type"),
    ("POST", "/batches", {"json": {"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                   "completion_window": "99y"}}, 400, "invalid_value"),
    ("POST", "/batches", {"content": b"x" * (2 * 1024 * 1024)}, 413, "request_too_large"),
    ("GET", "/batches/..%2F..%2Fetc%2Fpasswd", {}, 404, None),
    ("GET", "/batches/batch_../../x", {}, 404, None),
    ("GET", "/files/..%2Ffreight.db/content", {}, 404, None),
    ("GET", "/files/file-%00/content", {}, 404, None),
    ("DELETE", "/files/file-does-not-exist", {}, 404, None),
    ("POST", "/batches/batch_000000000000000000000000/cancel", {}, 404, None),
    ("GET", "/batches?limit=1000000000000000000000", {}, 400, "invalid_value"),
    ("GET", "/batches?limit=0", {}, 400, "invalid_value"),
    ("GET", "/batches?limit=-5", {}, 400, "invalid_value"),
    ("GET", "/batches?limit=abc", {}, 400, "invalid_value"),
    ("GET", "/files?limit=99999999", {}, 400, "invalid_value"),
    ("GET", "/files?order=sideways", {}, 400, "invalid_value"),
    ("GET", "/files?purpose=nope", {}, 400, "invalid_value"),
    ("GET", "/nowhere", {}, 404, None),
    ("PUT", "/batches", {}, 405, None),
])
def test_hostile_requests_get_clear_errors(raw: httpx.Client, method: str, path: str, kwargs: dict[str, Any],
                                           status: int, code: str | None) -> None:
    response = raw.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = envelope(response)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert response.headers.get("x-request-id")


def test_unknown_query_parameters_are_ignored(raw: httpx.Client) -> None:
    response = raw.get("/batches", params={"limit": 2, "colour": "blue", "after": ""})
    assert response.status_code == 200 and response.json()["object"] == "list"


def test_no_response_was_a_server_error() -> None:
    if not RECORDER.statuses:
        pytest.skip("runs after the other tests of this module")
    assert [s for s in RECORDER.statuses if s[0] >= 500] == []
