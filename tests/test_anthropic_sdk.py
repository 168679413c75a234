"""The Anthropic Message Batches API through the official ``anthropic`` SDK, against ``freight serve``.

Two real servers: one with small ``[anthropic]`` limits (so the 413s are cheap to reach), and one
with API keys and a 2-second batch window (expiry, project isolation, 401s). Every response the SDK
sees is recorded; the last test checks none was a 5xx and each carried a ``request-id``.
(shared/reference/batch-apis.md §4, §5, §7.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import Anthropic, DefaultHttpxClient
from anthropic.types.messages import MessageBatch
from servers import SCRIPTED, SCRIPTED_SLOW, FreightServer, ResponseLog, config_text, parse_jsonl, wait_for

MAX_REQUESTS = 3000
MAX_BYTES = 6_000_000
RESULT_TYPES = {"succeeded", "errored", "canceled", "expired"}
UNKNOWN = "msgbatch_" + "0" * 24


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer], database_url: str | None) -> Iterator[FreightServer]:
    s = make_server(config_text(extra=f"""
[anthropic]
max_batch_requests = {MAX_REQUESTS}
max_batch_bytes = {MAX_BYTES}
"""), database_url=database_url)
    yield s
    s.stop()  # before its database is dropped


@pytest.fixture(scope="module")
def keyed(make_server: Callable[..., FreightServer]) -> FreightServer:
    """API keys for projects alpha and beta, and a 2 s batch window."""
    s = make_server(config_text(extra='\n[anthropic]\nbatch_window = "2s"\n'), start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


@pytest.fixture(scope="module")
def responses() -> ResponseLog:
    return ResponseLog()


def sdk(server: FreightServer, log: ResponseLog | None = None, api_key: str = "x") -> Anthropic:
    http_client = DefaultHttpxClient(event_hooks={"response": [log.hook]}) if log is not None else None
    return Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=30, http_client=http_client)


@pytest.fixture(scope="module")
def client(server: FreightServer, responses: ResponseLog) -> Iterator[Anthropic]:
    c = sdk(server, responses)
    yield c
    c.close()


# ---- helpers -------------------------------------------------------------------------------

def params(text: str, *, model: str = SCRIPTED, max_tokens: int = 64, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra}


def script(**behaviour: Any) -> str:
    """A user message that tells the scripted backend what to do (freight/backends/scripted.py)."""
    return "#script " + json.dumps(behaviour)


def wait_ended(client: Anthropic, batch_id: str, timeout_s: float = 30) -> MessageBatch:
    def ended() -> MessageBatch | None:
        b = client.messages.batches.retrieve(batch_id)
        return b if b.processing_status == "ended" else None

    batch: MessageBatch = wait_for(ended, timeout_s, f"message batch {batch_id} to end", every_s=0.1)
    return batch


def check_counts(batch: MessageBatch, total: int) -> None:
    c = batch.request_counts
    assert c.processing + c.succeeded + c.errored + c.canceled + c.expired == total, c
    if batch.processing_status == "ended":
        assert c.processing == 0
    else:
        assert (c.processing, c.succeeded, c.errored, c.canceled, c.expired) == (total, 0, 0, 0, 0), c


def results(client: Anthropic, batch_id: str) -> dict[str, Any]:
    """custom_id -> result (the SDK's objects), checking every custom_id appears once."""
    out: dict[str, Any] = {}
    for item in client.messages.batches.results(batch_id):
        assert item.custom_id not in out
        assert item.result.type in RESULT_TYPES
        out[item.custom_id] = item.result
    return out


def check_error_body(exc: anthropic.APIStatusError, status: int, error_type: str) -> dict[str, Any]:
    assert exc.status_code == status, exc
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type and body["error"]["message"], body
    assert body["request_id"] == exc.response.headers["request-id"], "the body's request_id is the header's"
    assert exc.response.headers["content-type"].startswith("application/json")
    return body


def rfc3339(value: Any) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value)


# ---- the lifecycle -------------------------------------------------------------------------

def test_lifecycle_all_kinds_of_requests(client: Anthropic, server: FreightServer) -> None:
    requests: list[dict[str, Any]] = [
        {"custom_id": "plain", "params": params("hello there")},
        {"custom_id": "system-blocks", "params": params(
            "what now", system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            temperature=0.2, top_p=0.9, top_k=5, metadata={"user_id": "u-1"})},
        {"custom_id": "long", "params": params("one two three four five six", max_tokens=3)},
        {"custom_id": "stopped", "params": params(script(reply="alpha beta STOP gamma"),
                                                 stop_sequences=["STOP", "never"])},
        {"custom_id": "multi-turn", "params": {"model": SCRIPTED, "max_tokens": 20, "messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]}]}},
        {"custom_id": "image", "params": {"model": SCRIPTED, "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}},
        {"custom_id": "tools", "params": params("x", tools=[{"type": "web_search_20250305", "name": "web_search"}])},
        {"custom_id": "no-max-tokens", "params": {"model": SCRIPTED, "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "no-model", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "refused", "params": params(script(status=400))},
        {"custom_id": "flaky", "params": params(script(status=503, fail_times=2, key="anthropic-flaky"))},
    ]
    before = time.time()
    created = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress"
    assert created.results_url is None and created.ended_at is None and created.cancel_initiated_at is None
    check_counts(created, len(requests))
    assert int(before) - 1 <= created.created_at.timestamp() <= time.time() + 1
    assert created.expires_at.timestamp() == created.created_at.timestamp() + 86400

    raw = client.messages.batches.with_raw_response.retrieve(created.id)
    wire = raw.http_response.json()
    assert set(wire) == {"id", "type", "processing_status", "request_counts", "ended_at", "created_at", "expires_at",
                         "archived_at", "cancel_initiated_at", "results_url", "freight"}
    extension = wire["freight"]  # freight's extension fields (scheduling.md), and the figures as on a Batch
    assert {k: extension[k] for k in ("priority", "paused_at", "schedule", "not_before", "held_until")} == {
        "priority": 0, "paused_at": None, "schedule": None, "not_before": None, "held_until": None}
    assert {"cost_usd", "projected_cost_usd", "eta_at", "requests_per_s", "invalid_outputs"} <= set(extension)
    assert rfc3339(wire["expires_at"]) > rfc3339(wire["created_at"])
    assert raw.http_response.headers["request-id"]

    done = wait_ended(client, created.id)
    check_counts(done, len(requests))
    assert (done.request_counts.succeeded, done.request_counts.errored) == (6, 5), done.request_counts
    assert done.ended_at is not None and done.ended_at >= done.created_at
    assert done.results_url == f"{server.url}/v1/messages/batches/{created.id}/results"

    got = results(client, created.id)
    assert set(got) == {r["custom_id"] for r in requests}
    ok = {k: v.message for k, v in got.items() if v.type == "succeeded"}
    assert set(ok) == {"plain", "system-blocks", "long", "stopped", "multi-turn", "flaky"}
    for message in ok.values():
        assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
        assert message.model == SCRIPTED
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
        assert [block.type for block in message.content] == ["text"]
    assert ok["plain"].content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert (ok["plain"].stop_reason, ok["plain"].stop_sequence) == ("end_turn", None)
    assert ok["multi-turn"].content[0].text == "echo: second\npart"  # type: ignore[union-attr]
    assert ok["long"].stop_reason == "max_tokens" and ok["long"].usage.output_tokens == 3
    assert ok["long"].content[0].text == "echo: one two"  # type: ignore[union-attr]
    assert (ok["stopped"].stop_reason, ok["stopped"].stop_sequence) == ("stop_sequence", "STOP")
    assert ok["stopped"].content[0].text == "alpha beta "  # type: ignore[union-attr]

    errors = {k: v.error for k, v in got.items() if v.type == "errored"}
    assert set(errors) == {"image", "tools", "no-max-tokens", "no-model", "refused"}
    for error in errors.values():
        assert error.type == "error" and error.error.type == "invalid_request_error"
    assert "image" in errors["image"].error.message and "docs/anthropic.md" in errors["image"].error.message
    assert errors["tools"].error.message.startswith("tools.0.type: server tools")
    assert errors["no-max-tokens"].error.message == "max_tokens: Field required."
    assert errors["no-model"].error.message == "model: Field required."
    assert errors["refused"].error.message == "scripted failure 400"

    # The results endpoint itself: application/x-jsonl, one line per request in input order, \n only.
    r = httpx.get(done.results_url, headers={"x-api-key": "x", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-jsonl")
    lines = parse_jsonl(r.content)
    assert [line["custom_id"] for line in lines] == [req["custom_id"] for req in requests]
    assert all(set(line) == {"custom_id", "result"} for line in lines)
    assert r.content.isascii()

    # The same batch through the OpenAI API: one engine, one batch.
    with httpx.Client(base_url=server.url) as c:
        batch = c.get(f"/v1/batches/batch_{created.id.removeprefix('msgbatch_')}").json()
        assert batch["endpoint"] == "/v1/messages" and batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 11, "completed": 6, "failed": 5}
        first = parse_jsonl(c.get(f"/v1/files/{batch['input_file_id']}/content").content)[0]
        assert first == {"custom_id": "plain", "method": "POST", "url": "/v1/messages", "body": requests[0]["params"]}


def test_requests_for_a_model_that_is_not_served_each_error(client: Anthropic) -> None:
    created = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": params("x", model="claude-nonesuch")},  # type: ignore[list-item]
        {"custom_id": "b", "params": params("x", model="claude-nonesuch", stream=True)},  # type: ignore[list-item]
    ])
    done = wait_ended(client, created.id)
    assert (done.request_counts.errored, done.request_counts.succeeded) == (2, 0)
    got = results(client, created.id)
    assert got["a"].error.error.type == "not_found_error" and "claude-nonesuch" in got["a"].error.error.message


def test_cancel(client: Anthropic) -> None:
    n = 24
    created = client.messages.batches.create(requests=[
        {"custom_id": f"c{i}", "params": params(script(sleep_s=0.4), model=SCRIPTED_SLOW)} for i in range(n)])
    time.sleep(0.7)
    canceling = client.messages.batches.cancel(created.id)
    assert canceling.processing_status in ("canceling", "ended")
    assert canceling.cancel_initiated_at is not None
    check_counts(canceling, n)
    try:
        again = client.messages.batches.cancel(created.id)  # still canceling: returned as it is
        assert again.processing_status == "canceling" and again.cancel_initiated_at == canceling.cancel_initiated_at
    except anthropic.BadRequestError:
        pass  # it has ended in between
    done = wait_ended(client, created.id)
    check_counts(done, n)
    counts = done.request_counts
    assert counts.succeeded >= 4 and counts.canceled >= 4 and counts.errored == counts.expired == 0, counts
    got = results(client, created.id)
    assert len(got) == n
    assert sum(1 for r in got.values() if r.type == "canceled") == counts.canceled
    assert sum(1 for r in got.values() if r.type == "succeeded") == counts.succeeded
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.cancel(created.id)
    check_error_body(e.value, 400, "invalid_request_error")
    assert e.value.response.headers["x-should-retry"] == "false"


def test_delete(client: Anthropic) -> None:
    slow = client.messages.batches.create(requests=[
        {"custom_id": f"d{i}", "params": params(script(sleep_s=0.3), model=SCRIPTED_SLOW)} for i in range(8)])
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.delete(slow.id)
    check_error_body(e.value, 400, "invalid_request_error")
    assert "cancel" in e.value.body["error"]["message"]  # type: ignore[index]
    client.messages.batches.cancel(slow.id)
    wait_ended(client, slow.id)
    deleted = client.messages.batches.delete(slow.id)
    assert (deleted.id, deleted.type) == (slow.id, "message_batch_deleted")
    for call in (client.messages.batches.retrieve, client.messages.batches.delete, client.messages.batches.cancel):
        with pytest.raises(anthropic.NotFoundError) as nf:
            call(slow.id)
        check_error_body(nf.value, 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        list(client.messages.batches.results(slow.id))
    assert slow.id not in {b.id for b in client.messages.batches.list(limit=100)}


def test_list_pages(client: Anthropic) -> None:
    made = [client.messages.batches.create(requests=[{"custom_id": "x", "params": params(f"list {i}")}]).id
            for i in range(5)]
    newest_first = made[::-1]
    everything = [b.id for b in client.messages.batches.list(limit=2)]  # auto-pagination with after_id
    assert len(everything) == len(set(everything))
    assert everything[:5] == newest_first, "newest first"

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more is True
    assert (page.first_id, page.last_id) == (newest_first[0], newest_first[1])
    page = client.messages.batches.list(limit=2, after_id=newest_first[1])
    assert [b.id for b in page.data] == newest_first[2:4]
    # before_id: the page just newer than the cursor, still newest first; the SDK pages on with first_id.
    page = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert [b.id for b in page.data] == newest_first[2:4] and page.has_more is True
    walked = [b.id for b in client.messages.batches.list(limit=2, before_id=newest_first[4])]
    assert walked == newest_first[2:4] + newest_first[:2]
    page = client.messages.batches.list(limit=3, before_id=newest_first[0])
    assert page.data == [] and page.has_more is False
    oldest = everything[-1]
    page = client.messages.batches.list(limit=3, after_id=oldest)
    assert page.data == [] and page.has_more is False

    raw = client.messages.batches.with_raw_response.list(limit=1).http_response.json()
    assert set(raw) == {"data", "has_more", "first_id", "last_id"}
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.list(limit=1001)
    check_error_body(e.value, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(after_id=made[0], before_id=made[1])


def test_beta_variant(server: FreightServer) -> None:
    sent: list[httpx.Request] = []
    http_client = DefaultHttpxClient(event_hooks={"request": [sent.append]})
    client = Anthropic(base_url=server.url, api_key="x", max_retries=0, http_client=http_client)
    beta = client.beta.messages.batches
    created = beta.create(requests=[{"custom_id": "b1", "params": params("beta")}],  # type: ignore[list-item]
                          betas=["message-batches-2024-09-24", "some-future-beta"])
    assert created.processing_status == "in_progress"
    assert "message-batches-2024-09-24" in sent[-1].headers["anthropic-beta"]
    done = wait_for(lambda: (b := beta.retrieve(created.id)).processing_status == "ended" and b, 30, "beta batch")
    assert done.request_counts.succeeded == 1
    (item,) = list(beta.results(created.id))
    assert item.custom_id == "b1" and item.result.type == "succeeded"
    assert created.id in {b.id for b in beta.list(limit=100)}
    # Older SDKs also add ?beta=true (shared/reference/batch-apis.md §4.1): ignored as well.
    with httpx.Client(base_url=server.url, headers={"x-api-key": "x", "anthropic-beta": "whatever-2099-01-01"}) as c:
        r = c.get(f"/v1/messages/batches/{created.id}", params={"beta": "true"})
        assert r.status_code == 200 and r.json()["id"] == created.id
        assert c.get("/v1/messages/batches", params={"beta": "true", "limit": 1}).status_code == 200
    assert beta.delete(created.id).type == "message_batch_deleted"
    client.close()


def test_create_is_checked_synchronously(client: Anthropic, server: FreightServer) -> None:
    def refused(requests: Any, status: int = 400, error_type: str = "invalid_request_error") -> str:
        with pytest.raises(anthropic.APIStatusError) as e:
            client.messages.batches.create(requests=requests)
        body = check_error_body(e.value, status, error_type)
        assert e.value.response.headers["x-should-retry"] == "false"
        message: str = body["error"]["message"]
        return message

    before = [b.id for b in client.messages.batches.list(limit=1000)]
    good = {"custom_id": "ok", "params": params("x")}
    assert refused([good, good, {"custom_id": "a b", "params": {}}]).startswith("requests.1.custom_id:")
    assert refused([good, {"custom_id": "a b", "params": {}}]) == (
        "requests.1.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'.")
    assert refused([{"custom_id": "a\n", "params": {}}]).startswith("requests.0.custom_id: String should match")
    assert refused([{"custom_id": "x" * 65, "params": {}}]) == (
        "requests.0.custom_id: String should have at most 64 characters.")
    assert refused([{"custom_id": "", "params": {}}]).startswith("requests.0.custom_id: String should have at least")
    assert "unique" in refused([good, {"custom_id": "two", "params": {}}, {"custom_id": "ok", "params": {}}])
    assert refused([{"custom_id": "a"}]) == "requests.0.params: Field required."
    assert refused([{"custom_id": "a", "params": []}]) == "requests.0.params: Input should be a valid dictionary."
    assert refused([{"custom_id": "a", "params": {}, "extra": 1}]) == (
        "requests.0.extra: Extra inputs are not permitted.")
    assert refused([]).startswith("requests: List should have at least 1 item")
    assert "one model" in refused([good, {"custom_id": "b", "params": params("x", model=SCRIPTED_SLOW)}])
    assert refused([{"custom_id": f"r{i}", "params": {}} for i in range(MAX_REQUESTS + 1)],
                   413, "request_too_large").startswith("requests: a Message Batch holds at most")
    big = [{"custom_id": f"r{i}", "params": params("x" * 100_000)} for i in range(70)]
    assert "byte limit" in refused(big, 413, "request_too_large")
    with httpx.Client(base_url=server.url, headers={"x-api-key": "x"}) as c:
        for body, message in ((b"{not json", "not valid JSON"), (b'{"requests": {}}', "requests: Input should be"),
                              (b'{"requests": []', "ended before"), (b"{}", "requests: Field required.")):
            r = c.post("/v1/messages/batches", content=body)
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert [b.id for b in client.messages.batches.list(limit=1000)] == before, "a refused create leaves nothing"


def test_a_big_create_is_streamed(client: Anthropic) -> None:
    # ~5 MB in one body; each request holds brackets and quotes inside strings, escapes, non-ASCII.
    text = 'braces {[("quoted")]} \\ back\\slash é ' * 120
    n = 1000
    created = client.messages.batches.create(requests=[
        {"custom_id": f"big-{i:04d}", "params": params(f"{i} {text}", max_tokens=2)} for i in range(n)])
    done = wait_ended(client, created.id, timeout_s=60)
    assert done.request_counts.succeeded == n
    got = results(client, created.id)
    assert sorted(got) == [f"big-{i:04d}" for i in range(n)]
    assert got["big-0007"].message.content[0].text == "echo: 7"


def test_error_envelopes_and_request_ids(server: FreightServer, client: Anthropic) -> None:
    for call in (client.messages.batches.retrieve, client.messages.batches.cancel, client.messages.batches.delete):
        with pytest.raises(anthropic.NotFoundError) as e:
            call(UNKNOWN)
        check_error_body(e.value, 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("batch_" + "0" * 24)  # an OpenAI id is not a Message Batch id
    running = client.messages.batches.create(requests=[
        {"custom_id": "r", "params": params(script(sleep_s=0.5), model=SCRIPTED_SLOW)}])
    with httpx.Client(base_url=server.url, headers={"x-api-key": "x"}) as c:
        r = c.get(f"/v1/messages/batches/{running.id}/results")
        assert r.status_code == 400 and "not ended" in r.json()["error"]["message"]
        for method, path, status in (("GET", "/v1/messages/batches/x/y/z", 404), ("PUT", "/v1/messages/batches", 405),
                                     ("GET", f"/v1/messages/batches/{UNKNOWN}/cancel", 405),
                                     ("GET", f"/v1/messages/batches/{UNKNOWN}/pause", 405),
                                     ("PATCH", f"/v1/messages/batches/{UNKNOWN}", 405), ("GET", "/v1/messages", 405)):
            r = c.request(method, path)
            body = r.json()
            assert r.status_code == status and body["type"] == "error", (method, path, r.text)
            assert body["request_id"] == r.headers["request-id"] == r.headers["x-request-id"]
    client.messages.batches.cancel(running.id)


def test_real_time_messages(client: Anthropic) -> None:
    message = client.messages.create(model=SCRIPTED, max_tokens=10, system="be nice",
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "echo: hi" and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=SCRIPTED, max_tokens=10, messages=[{"role": "assistant", "content": "pre"}])
    check_error_body(e.value, 400, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="claude-nonesuch", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    check_error_body(nf.value, 404, "not_found_error")


def test_openai_batch_files_may_hold_messages_lines(server: FreightServer) -> None:
    lines = [{"custom_id": f"m{i}", "method": "POST", "url": "/v1/messages", "body": params(f"msg {i}")}
             for i in range(3)]
    with server.client() as oai:
        f = oai.files.create(file=("m.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
        batch = oai.batches.create(input_file_id=f.id, endpoint="/v1/messages", completion_window="24h")  # type: ignore[arg-type]
        done = wait_for(lambda: (b := oai.batches.retrieve(batch.id)).status == "completed" and b, 30, "batch")
        out = parse_jsonl(oai.files.content(done.output_file_id).content)
    assert [line["response"]["body"]["content"][0]["text"] for line in out] == [f"echo: msg {i}" for i in range(3)]
    assert all(line["response"]["body"]["type"] == "message" for line in out)


# ---- expiry, keys and projects (the keyed server, 2 s window) -------------------------------

def test_expired_requests(keyed: FreightServer) -> None:
    with sdk(keyed, api_key=keyed.keys["alpha"]) as alpha:  # type: ignore[attr-defined]
        n = 20
        created = alpha.messages.batches.create(requests=[
            {"custom_id": f"e{i}", "params": params(script(sleep_s=1.2), model=SCRIPTED_SLOW)} for i in range(n)])
        assert created.expires_at.timestamp() - created.created_at.timestamp() == 2
        done = wait_ended(alpha, created.id)
        check_counts(done, n)
        counts = done.request_counts
        assert counts.expired >= 4 and counts.succeeded >= 8 and counts.errored == counts.canceled == 0, counts
        got = results(alpha, created.id)
        assert sum(1 for r in got.values() if r.type == "expired") == counts.expired


def test_projects_are_isolated_and_keys_required(keyed: FreightServer) -> None:
    keys: dict[str, str] = keyed.keys  # type: ignore[attr-defined]
    with sdk(keyed, api_key=keys["alpha"]) as alpha, sdk(keyed, api_key=keys["beta"]) as beta:
        mine = alpha.messages.batches.create(requests=[{"custom_id": "a", "params": params("mine")}])
        wait_ended(alpha, mine.id)
        for call in (beta.messages.batches.retrieve, beta.messages.batches.cancel, beta.messages.batches.delete):
            with pytest.raises(anthropic.NotFoundError) as theirs:
                call(mine.id)
            with pytest.raises(anthropic.NotFoundError) as nobody:
                call(UNKNOWN)
            assert theirs.value.body["error"] == {  # type: ignore[index]
                **nobody.value.body["error"], "message": nobody.value.body["error"]["message"].replace(  # type: ignore[index]
                    UNKNOWN, mine.id)}
        assert mine.id not in {b.id for b in beta.messages.batches.list()}
        assert beta.messages.batches.list(after_id=mine.id).data == []
        with httpx.Client(base_url=keyed.url, headers={"x-api-key": keys["beta"]}) as c:
            assert c.get(f"/v1/messages/batches/{mine.id}/results").status_code == 404
        assert [r.result.type for r in alpha.messages.batches.results(mine.id)] == ["succeeded"]
    with sdk(keyed, api_key="wrong") as nobody_client, pytest.raises(anthropic.AuthenticationError) as e:
        nobody_client.messages.batches.list()
    check_error_body(e.value, 401, "authentication_error")
    r = httpx.post(keyed.url + "/v1/messages/batches", json={"requests": []})
    assert r.status_code == 401 and r.json()["type"] == "error" and r.headers["www-authenticate"]


# ---- durability ------------------------------------------------------------------------------

def test_a_kill_9_loses_nothing(client: Anthropic, server: FreightServer) -> None:
    n = 16
    created = client.messages.batches.create(requests=[
        {"custom_id": f"k{i}", "params": params(script(sleep_s=0.3), model=SCRIPTED_SLOW)} for i in range(n)])
    time.sleep(0.5)
    server.restart()
    done = wait_ended(client, created.id)
    assert done.request_counts.succeeded == n
    assert sorted(results(client, created.id)) == sorted(f"k{i}" for i in range(n))


def test_no_5xx_and_every_response_has_a_request_id(responses: ResponseLog) -> None:
    assert responses.entries
    for method, url, status, _ in responses.entries:
        assert status < 500, (method, url, status)
    assert all(request_id for *_, request_id in responses.entries)
