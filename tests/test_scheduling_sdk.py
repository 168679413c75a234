"""Priority, pause, resume and reprioritise through the official SDKs (docs/scheduling.md).

``freight serve`` with a scripted model of two slots that claims chunks of 6: a pause lands while two
requests run and four wait inside the backend for a slot; those four are withdrawn back to pending,
nothing else starts until resume, then the batch completes with every request once. The extension
routes are called with the SDKs' ``client.post``; ``priority`` on create goes through ``extra_body``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI
from servers import FreightServer, config_text, done_requests, jsonl_bytes, request_states, wait_for

MODEL = "freight-scripted-two-slots"
N = 12
# Off-peak hours that start six hours from now: a batch that asks for them is held for this whole module.
_OFF = dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)
OFF_PEAK = f"{_OFF:%H:%M}-{_OFF + dt.timedelta(minutes=1):%H:%M}"
CONFIG = config_text(extra=f"""
[models."{MODEL}"]
backend = "scripted"
chunk_size = 6
max_concurrency = 1
slots = 2

[scheduling]
off_peak = ["{OFF_PEAK}"]
""")


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    s = make_server(CONFIG, start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


@pytest.fixture(scope="module")
def alpha(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client(api_key=server.keys["alpha"])  # type: ignore[attr-defined]
    yield c
    c.close()


@pytest.fixture(scope="module")
def beta(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client(api_key=server.keys["beta"])  # type: ignore[attr-defined]
    yield c
    c.close()


def post(client: OpenAI, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(path, cast_to=httpx.Response, body=body or {})
    data: dict[str, Any] = response.json()
    return data


def create(client: OpenAI, sleep_s: float, **extra: Any) -> Any:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}], "script": {"sleep_s": sleep_s}}}
        for i in range(N)]
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 extra_body=extra or None)


def test_priority_on_create_is_shown_back_and_validated(alpha: OpenAI) -> None:
    batch = create(alpha, 0, priority=7)
    assert {k: batch.to_dict()["freight"][k] for k in ("priority", "paused_at")} == {"priority": 7, "paused_at": None}
    assert alpha.batches.retrieve(batch.id).to_dict()["freight"]["priority"] == 7
    for bad in (10_001, "high", 1.5):
        with pytest.raises(openai.BadRequestError) as exc:
            create(alpha, 0, priority=bad)
        assert exc.value.status_code == 400 and exc.value.param == "priority"  # type: ignore[attr-defined]
    plain = create(alpha, 0)
    assert plain.to_dict()["freight"]["priority"] == 0


def test_pause_withdraws_queued_requests_and_nothing_starts_until_resume(alpha: OpenAI, server: FreightServer) -> None:
    batch = create(alpha, 1.0)
    # (the store-wide count below could otherwise see an earlier test's batch still running)
    wait_for(lambda: alpha.batches.retrieve(batch.id).status == "in_progress", 30, "the batch to start")
    wait_for(lambda: request_states(server.db_path).get(1, 0) >= 6, 30, "a chunk claimed")
    paused = post(alpha, f"/batches/{batch.id}/pause")
    assert paused["status"] == "in_progress" and isinstance(paused["freight"]["paused_at"], int)
    # The two running finish; the four waiting in the backend go back to pending.
    wait_for(lambda: request_states(server.db_path).get(1, 0) == 0, 30, "nothing running")
    finished = len(done_requests(server.db_path, batch.id))
    assert finished < 6, "requests waiting inside the backend were withdrawn, not run"
    time.sleep(0.6)  # a dozen dispatcher turns (poll 0.05 s): none may start a request of the paused batch
    assert len(done_requests(server.db_path, batch.id)) == finished
    assert request_states(server.db_path).get(1, 0) == 0
    still = alpha.batches.retrieve(batch.id)
    assert still.status == "in_progress" and still.to_dict()["freight"]["paused_at"] == paused["freight"]["paused_at"]
    resumed = post(alpha, f"/batches/{batch.id}/resume")
    assert resumed["freight"]["paused_at"] is None

    def ended() -> Any:
        b = alpha.batches.retrieve(batch.id)
        return b if b.status == "completed" else None

    done = wait_for(ended, 60, "the batch to complete")
    assert done.request_counts.completed == N
    out = alpha.files.content(done.output_file_id).read().decode().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in out) == sorted(f"r{i}" for i in range(N))
    assert all(attempts >= 1 for _, _, attempts in done_requests(server.db_path, batch.id).values())


def test_reprioritise_and_project_isolation(alpha: OpenAI, beta: OpenAI) -> None:
    # Held for an hour, so that it is still active when reprioritised (a finished batch keeps its priority:
    # with nothing holding it, its 12 instant requests could finish before the first call here).
    batch = create(alpha, 0, not_before=int(time.time()) + 3600)
    assert post(alpha, f"/batches/{batch.id}/priority", {"priority": -4})["freight"]["priority"] == -4
    with pytest.raises(openai.BadRequestError):
        post(alpha, f"/batches/{batch.id}/priority", {"priority": "top"})
    for path in ("pause", "resume"):
        with pytest.raises(openai.NotFoundError):
            post(beta, f"/batches/{batch.id}/{path}")
    with pytest.raises(openai.NotFoundError):
        post(beta, f"/batches/{batch.id}/priority", {"priority": 1})
    assert alpha.batches.retrieve(batch.id).to_dict()["freight"]["priority"] == -4


# ---- Anthropic Message Batches ------------------------------------------------------------------

def test_message_batches_pause_resume_and_priority(server: FreightServer) -> None:
    keys = server.keys  # type: ignore[attr-defined]
    client = Anthropic(base_url=server.url, api_key=keys["alpha"], max_retries=0, timeout=30)
    other = Anthropic(base_url=server.url, api_key=keys["beta"], max_retries=0, timeout=30)
    text = "#script " + json.dumps({"sleep_s": 0.2})
    created = client.messages.batches.create(requests=[
        {"custom_id": f"m{i}", "params": {"model": MODEL, "max_tokens": 16, "messages": [
            {"role": "user", "content": text}]}} for i in range(N)], extra_body={"priority": 3})
    assert created.to_dict()["freight"]["priority"] == 3
    paused = client.post(f"/v1/messages/batches/{created.id}/pause", cast_to=dict[str, Any])
    assert paused["processing_status"] == "in_progress" and paused["freight"]["paused_at"] is not None
    wait_for(lambda: request_states(server.db_path).get(1, 0) == 0, 30, "nothing running")
    time.sleep(1.0)
    before = client.messages.batches.retrieve(created.id).request_counts.succeeded
    time.sleep(1.0)
    assert client.messages.batches.retrieve(created.id).request_counts.succeeded == before < N
    again = client.post(f"/v1/messages/batches/{created.id}/priority", cast_to=dict[str, Any],
                        body={"priority": 9})
    assert again["freight"]["priority"] == 9
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.post(f"/v1/messages/batches/{created.id}/priority", cast_to=dict[str, Any], body={"priority": []})
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        other.post(f"/v1/messages/batches/{created.id}/resume", cast_to=dict[str, Any])
    client.post(f"/v1/messages/batches/{created.id}/resume", cast_to=dict[str, Any])

    def ended() -> Any:
        b = client.messages.batches.retrieve(created.id)
        return b if b.processing_status == "ended" else None

    done = wait_for(ended, 60, "the batch to end")
    assert done.request_counts.succeeded == N
    extension = done.to_dict()["freight"]
    assert {k: extension[k] for k in ("priority", "paused_at", "schedule", "not_before", "held_until")} == {
        "priority": 9, "paused_at": None, "schedule": None, "not_before": None, "held_until": None}
    client.close()
    other.close()


def test_schedule_and_not_before_are_accepted_through_extra_body_and_shown_back(alpha: OpenAI) -> None:
    now = int(time.time())
    off_peak = create(alpha, 0, schedule="off_peak")
    ext = off_peak.to_dict()["freight"]
    assert (ext["schedule"], ext["not_before"]) == ("off_peak", None)
    assert now + 5 * 3600 < ext["held_until"] <= now + 7 * 3600, "held until its off-peak window"
    held = create(alpha, 0, not_before=now + 3600)
    assert {k: held.to_dict()["freight"][k] for k in ("not_before", "held_until")} == {
        "not_before": now + 3600, "held_until": now + 3600}
    time.sleep(1.0)
    for b in (off_peak, held):
        again = alpha.batches.retrieve(b.id)
        assert again.request_counts is not None and again.request_counts.completed == 0, "nothing ran"
        assert again.to_dict()["freight"]["held_until"] is not None
        alpha.batches.cancel(b.id)
    for bad, param in (("peak", "schedule"), (1, "schedule"), ("soon", "not_before"),
                       (now + 2 * 86400, "not_before"), (True, "not_before")):
        with pytest.raises(openai.BadRequestError) as exc:
            create(alpha, 0, **{param: bad})
        assert exc.value.status_code == 400 and exc.value.param == param  # type: ignore[attr-defined]
        assert exc.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_message_batches_take_schedule_and_not_before(server: FreightServer) -> None:
    client = Anthropic(base_url=server.url, api_key=server.keys["alpha"], max_retries=0, timeout=30)  # type: ignore[attr-defined]
    requests: list[Any] = [{"custom_id": "m0", "params": {"model": MODEL, "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"}]}}]
    later = int(time.time()) + 3600
    try:
        created = client.messages.batches.create(requests=requests,
                                                 extra_body={"schedule": "off_peak", "not_before": later})
        assert {k: created.to_dict()["freight"][k] for k in ("schedule", "not_before")} == {
            "schedule": "off_peak", "not_before": later}
        client.messages.batches.cancel(created.id)
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.batches.create(requests=requests, extra_body={"not_before": "soon"})
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert "not_before" in bad.value.body["error"]["message"]  # type: ignore[index]
    finally:
        client.close()
