"""Forwarding batches to a provider's own batch API, end to end over real HTTP.

A second ``freight serve`` on loopback plays the provider (its OpenAI Files/Batches API for
``openai-batch``, its Anthropic Message Batches API for ``anthropic-batch``). The forwarding freight
splits batches by small limits; the provider is restarted in the middle of one; a provider batch
expires partway and the rest is resubmitted; the forwarder is killed (-9) between upload and create
and between create and download. Counted on the provider's side, from its store: every request of
ours that succeeded there succeeded exactly once, and no upstream batch was created twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.batch_request_counts import BatchRequestCounts as RequestCounts
from servers import SCRIPTED, SCRIPTED_SLOW, TERMINAL, FreightServer, config_text, jsonl_bytes, parse_jsonl, wait_for

CHAT = "/v1/chat/completions"
#: The provider's per-project limit of active batches (the "tight" project is filled up to block creates).
UPSTREAM_ACTIVE = 6


# ---- the provider and the forwarder --------------------------------------------------------

@pytest.fixture(scope="module")
def upstream(make_server: Callable[..., FreightServer]) -> Iterator[FreightServer]:
    s = make_server(config_text(limits=f"max_active_batches_per_project = {UPSTREAM_ACTIVE}\n", extra="""
[models."upstream-expiring"]
backend = "scripted"
chunk_size = 4
max_concurrency = 1

[models."blocker"]
backend = "scripted"
"""), start=False)
    s.keys = {p: s.create_key(p) for p in ("main", "tight")}  # type: ignore[attr-defined]
    saved = {k: os.environ.get(k) for k in ("LANE_MAIN_KEY", "LANE_TIGHT_KEY")}
    os.environ["LANE_MAIN_KEY"], os.environ["LANE_TIGHT_KEY"] = s.keys["main"], s.keys["tight"]  # type: ignore[attr-defined]
    yield s.start()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def lane(name: str, kind: str, base: str, upstream_model: str, key: str = "LANE_MAIN_KEY", **extra: Any) -> str:
    lines = [f'[models."{name}"]', f'backend = "{kind}"', f'base_url = "{base}"', f'api_key_env = "{key}"',
             f'upstream_model = "{upstream_model}"', "poll_interval_s = 0.1", "max_poll_interval_s = 0.4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="module")
def forwarder(make_server: Callable[..., FreightServer], upstream: FreightServer) -> FreightServer:
    v1 = upstream.url + "/v1"
    config = (
        lane("fwd-openai", "openai-batch", v1, SCRIPTED, max_requests_per_batch=40)
        + lane("fwd-slow", "openai-batch", v1, SCRIPTED_SLOW)
        + lane("fwd-expiring", "openai-batch", v1, "upstream-expiring", completion_window="2s", max_rounds=5)
        + lane("fwd-tight", "openai-batch", v1, SCRIPTED, key="LANE_TIGHT_KEY")
        + lane("fwd-claude", "anthropic-batch", upstream.url, SCRIPTED, max_requests_per_batch=30)
        + lane("fwd-refused", "openai-batch", upstream.url + "/nope/v1", SCRIPTED)
        + "[engine]\npoll_interval_s = 0.05\n"
    )
    return make_server(config)


# ---- helpers -------------------------------------------------------------------------------

def ro(db: Path) -> sqlite3.Connection:
    return contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30))  # type: ignore[return-value]


def subs_of(forwarder: FreightServer, batch_id: str) -> list[dict[str, Any]]:
    with ro(forwarder.db_path) as c:  # type: ignore[attr-defined]
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM lane_subs WHERE batch_id=? ORDER BY created_at",
                                           (batch_id,))]


def upstream_runs(upstream: FreightServer, sub_ids: list[str]) -> tuple[Counter[int], Counter[int]]:
    """Per request index of ours: how often the provider answered it 200, and how often it ran at all."""
    ok: Counter[int] = Counter()
    ran: Counter[int] = Counter()
    with ro(upstream.db_path) as c:  # type: ignore[attr-defined]
        for sub_id in sub_ids:
            for custom_id, status in c.execute(
                    "SELECT custom_id, status_code FROM requests WHERE custom_id LIKE ? AND state=2", (sub_id + "-%",)):
                idx = int(custom_id.rsplit("-", 1)[1])
                if status is not None:
                    ran[idx] += 1
                if status == 200:
                    ok[idx] += 1
    return ok, ran


def upstream_batches_per_file(upstream: FreightServer, file_ids: list[str]) -> Counter[str]:
    with ro(upstream.db_path) as c:  # type: ignore[attr-defined]
        return Counter(row[0] for row in c.execute(
            f"SELECT input_file_id FROM batches WHERE input_file_id IN ({','.join('?' for _ in file_ids)})",
            file_ids))


def submit(client: openai.OpenAI, model: str, n: int, prefix: str, **script: Any) -> str:
    lines = [{"custom_id": f"{prefix}{i}", "method": "POST", "url": CHAT,
              "body": {"model": model, "messages": [{"role": "user", "content": f"{prefix} {i}"}],
                       **({"script": script} if script else {})}} for i in range(n)]
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id


def wait_done(client: openai.OpenAI, batch_id: str, timeout_s: float = 30) -> openai.types.Batch:
    batch: openai.types.Batch = wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b,
                                         timeout_s, f"batch {batch_id}", every_s=0.1)
    return batch


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return parse_jsonl(client.files.content(file_id).content) if file_id else []


def check_once_upstream(forwarder: FreightServer, upstream: FreightServer, batch_id: str, n: int,
                        retried: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    subs = subs_of(forwarder, batch_id)
    ok, ran = upstream_runs(upstream, [s["id"] for s in subs])
    assert all(count == 1 for count in ok.values()), f"a request succeeded twice upstream: {ok.most_common(3)}"
    twice = {idx for idx, count in ran.items() if count > 1} - retried
    assert not twice, f"requests ran more than once upstream: {sorted(twice)[:10]}"
    files = [s["upload_id"] for s in subs if s["upload_id"]]
    if files:
        per_file = upstream_batches_per_file(upstream, files)
        assert all(count == 1 for count in per_file.values()), f"an upload was made into two batches: {per_file}"
    return subs


@pytest.fixture(scope="module")
def client(forwarder: FreightServer) -> Iterator[openai.OpenAI]:
    with forwarder.client() as c:
        yield c


@pytest.fixture(scope="module")
def expiring(client: openai.OpenAI) -> str:
    """Started first, checked last: 12 requests of 2.5 s, 4 at a time, in 2 s upstream windows."""
    return submit(client, "fwd-expiring", 12, "x", sleep_s=2.5)


# ---- scenarios -----------------------------------------------------------------------------

def test_split_results_failures_and_a_retried_request(client: openai.OpenAI, forwarder: FreightServer,
                                                      upstream: FreightServer, expiring: str) -> None:
    n = 100
    lines = [{"custom_id": f"s{i}", "method": "POST", "url": CHAT, "body": {
        "model": "fwd-openai", "messages": [{"role": "user", "content": f"q{i}"}],
        **({"script": {"status": 400}} if i == 7 else {}),
        # fails every attempt of the provider's own retries (5), then succeeds in the next round
        **({"script": {"status": 503, "fail_times": 5, "key": "lane-retry"}} if i == 9 else {})}} for i in range(n)]
    f = client.files.create(file=("split.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (n - 1, 1)
    out, err = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert [x["custom_id"] for x in out] == [f"s{i}" for i in range(n) if i != 7], "input order, every request"
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: q0"
    assert out[0]["response"]["body"]["model"] == SCRIPTED, "upstream_model is what the provider saw"
    (refused,) = err
    assert refused["custom_id"] == "s7" and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["message"] == "scripted failure 400", "the provider's own body"

    subs = check_once_upstream(forwarder, upstream, batch.id, n, retried=frozenset({9}))
    first = [s for s in subs if s["round"] == 1]
    assert sorted(s["requests"] for s in first) == [20, 40, 40], "split by max_requests_per_batch"
    assert [(s["round"], s["requests"]) for s in subs if s["round"] > 1] == [(2, 1)], "only s9 went again"
    assert all(s["state"] == "done" and s["upstream_id"] for s in subs)


def test_output_checks_apply_to_lane_answers_and_freights_keys_stay_home(
        client: openai.OpenAI, forwarder: FreightServer, upstream: FreightServer) -> None:
    replies = {"good": '{"label": "spam"}', "not-json": "sure, it is spam", "no-label": '{"kind": "spam"}'}
    lines = [{"custom_id": cid, "method": "POST", "url": CHAT, "body": {
        "model": "fwd-openai", "messages": [{"role": "user", "content": cid}], "script": {"reply": reply}}}
        for cid, reply in replies.items()]
    f = client.files.create(file=("checked.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h", extra_body={
        "output_schema": {"type": "object", "required": ["label"]}, "cache": False})
    done = wait_done(client, batch.id)
    out, err = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert [x["custom_id"] for x in out] == ["good"]
    assert {x["custom_id"]: x["error"]["code"] for x in err} == {"not-json": "output_invalid",
                                                               "no-label": "output_invalid"}
    assert all(x["response"] is None for x in err)
    assert done.model_extra and done.model_extra["freight"]["invalid_outputs"] == 2
    subs = subs_of(forwarder, batch.id)
    with ro(upstream.db_path) as c:  # type: ignore[attr-defined]
        bodies = [bytes(row[0]) for sub in subs for row in c.execute(
            "SELECT body FROM requests WHERE custom_id LIKE ?", (sub["id"] + "-%",))]
    assert len(bodies) == 3 and not any(b"__freight_" in body for body in bodies), "freight's own keys stay home"


def test_anthropic_lane_through_the_anthropic_api(forwarder: FreightServer, upstream: FreightServer) -> None:
    with anthropic.Anthropic(base_url=forwarder.url, api_key="x", max_retries=0) as a:
        n = 45
        requests = [{"custom_id": f"m{i}", "params": {"model": "fwd-claude", "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": f"hello {i}"}]}}
                    for i in range(n)]
        requests[5]["params"]["messages"] = [  # type: ignore[index]
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]
        mb = a.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        done = wait_for(lambda: (b := a.messages.batches.retrieve(mb.id)).processing_status == "ended" and b, 30,
                        "the message batch", every_s=0.1)
        assert (done.request_counts.succeeded, done.request_counts.errored) == (n - 1, 1)
        got = {r.custom_id: r.result for r in a.messages.batches.results(mb.id)}
        assert got["m0"].message.content[0].text == "echo: hello 0"  # type: ignore[union-attr]
        assert got["m5"].type == "errored" and got["m5"].error.error.type == "invalid_request_error"  # type: ignore[union-attr]
    subs = check_once_upstream(forwarder, upstream, "batch_" + mb.id.removeprefix("msgbatch_"), n)
    assert sorted(s["requests"] for s in subs) == [15, 30] and all(s["upstream_id"].startswith("msgbatch_")
                                                                     for s in subs)


def test_cancel_reaches_the_provider(client: openai.OpenAI, forwarder: FreightServer,
                                     upstream: FreightServer) -> None:
    batch_id = submit(client, "fwd-slow", 40, "c", sleep_s=0.5)  # 2.5 s of work upstream, 8 at a time
    wait_for(lambda: any(s["state"] == "running" for s in subs_of(forwarder, batch_id)), 15, "the upstream batch")
    seen = wait_for(lambda: (client.batches.retrieve(batch_id).request_counts or RequestCounts(
        completed=0, failed=0, total=0)).completed, 15, "upstream progress")
    cancelling = client.batches.cancel(batch_id)
    # the cancel answer shows the upstream's progress as a retrieve does (it showed 0 done)
    assert cancelling.request_counts is not None and cancelling.request_counts.completed >= seen
    done = wait_done(client, batch_id)
    assert done.status == "cancelled" and done.request_counts is not None
    out, err = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert len(out) + len(err) == 40 and err, (len(out), len(err))
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    (sub,) = subs_of(forwarder, batch_id)
    with httpx.Client(base_url=upstream.url, headers={"x-api-key": upstream.keys["main"]}) as u:  # type: ignore[attr-defined]
        assert u.get(f"/v1/batches/{sub['upstream_id']}").json()["status"] == "cancelled"
    check_once_upstream(forwarder, upstream, batch_id, 40)


def test_provider_restart_in_the_middle_and_live_progress(client: openai.OpenAI, forwarder: FreightServer,
                                                           upstream: FreightServer) -> None:
    n = 24
    batch_id = submit(client, "fwd-slow", n, "r", sleep_s=0.4)
    progress: list[int] = []

    def midway() -> bool:
        b = client.batches.retrieve(batch_id)
        assert b.request_counts is not None
        if b.status == "in_progress" and 0 < b.request_counts.completed < n:
            progress.append(b.request_counts.completed)
        return bool(progress)

    wait_for(midway, 15, "upstream progress shown in request_counts")
    upstream.restart()  # kill -9, then the same data dir: it picks its batch up, the forwarder keeps polling
    done = wait_done(client, batch_id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == n
    check_once_upstream(forwarder, upstream, batch_id, n)


def test_kill_9_between_upload_and_create(client: openai.OpenAI, forwarder: FreightServer,
                                          upstream: FreightServer) -> None:
    tight = upstream.keys["tight"]  # type: ignore[attr-defined]
    with httpx.Client(base_url=upstream.url + "/v1", headers={"authorization": f"Bearer {tight}"}) as u:
        # Fill the provider's "tight" project up: its creates are refused (429) until these end.
        blocker = jsonl_bytes([{"custom_id": "b", "method": "POST", "url": CHAT, "body": {
            "model": "blocker", "messages": [{"role": "user", "content": "x"}], "script": {"sleep_s": 60}}}])
        blockers = []
        for _ in range(UPSTREAM_ACTIVE):
            fid = u.post("/files", files={"file": ("b.jsonl", blocker)}, data={"purpose": "batch"}).json()["id"]
            blockers.append(u.post("/batches", json={"input_file_id": fid, "endpoint": CHAT,
                                                     "completion_window": "24h"}).json()["id"])
        n = 30
        batch_id = submit(client, "fwd-tight", n, "t")
        sub = wait_for(lambda: next((s for s in subs_of(forwarder, batch_id) if s["state"] == "creating"), None),
                       15, "the forwarder to have uploaded and to be trying to create")
        assert sub["upload_id"] and sub["upstream_id"] is None
        forwarder.kill()
        for b in blockers:
            u.post(f"/batches/{b}/cancel")
        forwarder.start()
        done = wait_done(client, batch_id)
        assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == n
        (after,) = subs_of(forwarder, batch_id)
        assert after["id"] == sub["id"] and after["upload_id"] == sub["upload_id"]
        check_once_upstream(forwarder, upstream, batch_id, n)
        files = u.get("/files", params={"purpose": "batch"}).json()["data"]
        assert sum(1 for f in files if f["filename"] == f"freight-{sub['id']}.jsonl") == 1, "uploaded once"


def test_kill_9_between_create_and_download(client: openai.OpenAI, forwarder: FreightServer,
                                            upstream: FreightServer) -> None:
    n = 16
    batch_id = submit(client, "fwd-slow", n, "k", sleep_s=0.5)
    sub = wait_for(lambda: next((s for s in subs_of(forwarder, batch_id) if s["state"] == "running"), None), 15,
                   "the upstream batch to be created")
    forwarder.kill()
    time.sleep(1.2)  # the provider finishes while the forwarder is down
    forwarder.start()
    done = wait_done(client, batch_id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == n
    (after,) = subs_of(forwarder, batch_id)
    assert after["upstream_id"] == sub["upstream_id"]
    check_once_upstream(forwarder, upstream, batch_id, n)


def test_a_partly_expired_upstream_batch_is_resubmitted(client: openai.OpenAI, forwarder: FreightServer,
                                                        upstream: FreightServer, expiring: str) -> None:
    done = wait_done(client, expiring, timeout_s=40)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 12
    subs = check_once_upstream(forwarder, upstream, expiring, 12)
    assert len(subs) >= 2 and subs[0]["upstream_status"] == "expired", subs
    assert [s["round"] for s in subs] == list(range(1, len(subs) + 1))
    assert sum(s["requests"] for s in subs[1:]) < 12 * (len(subs) - 1), "only what had not run went again"


def test_an_upload_the_upstream_refuses_fails_its_requests_at_once(client: openai.OpenAI) -> None:
    """A 4xx on upload is for good, as on create (it was tried again for ever, the batch never ending)."""
    done = wait_done(client, submit(client, "fwd-refused", 2, "nope"))
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
    errors = lines_of(client, done.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"upstream_refused"}, errors
    assert "HTTP 404" in errors[0]["error"]["message"]


def test_lane_models_are_listed_and_validated(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"fwd-openai", "fwd-slow", "fwd-claude", "fwd-tight"} <= ids
    # a lane model serves only its endpoints: validation works as for any model
    lines = [{"custom_id": "e", "method": "POST", "url": "/v1/messages", "body": {
        "model": "fwd-openai", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}}]
    f = client.files.create(file=("e.jsonl", jsonl_bytes(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/messages", completion_window="24h")  # type: ignore[arg-type]
    failed = wait_done(client, b.id)
    assert failed.status == "failed" and failed.errors is not None
    assert failed.errors.data[0].code == "model_not_found"


def test_a_real_time_request_to_a_lane_model_says_it_is_batch_only(client: openai.OpenAI,
                                                                   forwarder: FreightServer) -> None:
    """Listed by /v1/models, so a real-time call to it is a client's natural mistake: a 400 that says what
    to do (it was a 404 'unknown model')."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="fwd-openai", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "batch_only_model" and "only through batches" in e.value.message
    with anthropic.Anthropic(base_url=forwarder.url, api_key="x", max_retries=0) as claude, \
            pytest.raises(anthropic.BadRequestError) as a:
        claude.messages.create(model="fwd-claude", max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert "only through batches" in str(a.value)
