"""API keys, projects kept apart, per-project limits: against real ``freight serve`` processes.

- ``freight keys create`` prints a key once; only its sha256 is stored.
- Without keys, ``freight serve`` refuses a non-loopback address; with keys, every request needs a
  valid one (``Authorization: Bearer`` or ``X-Api-Key``) or gets a 401 envelope; /health is open.
- Another project's ids answer 404 on every route (walked from the server's own OpenAPI schema,
  so a new route that is not walked here fails the test).
- Per-project limits: 429 while a project has too much work in the system, 400 for a batch that
  could never fit.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import (
    SCRIPTED,
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    config_text,
    free_port,
    freight_command,
    jsonl_bytes,
    request_line,
    subprocess_env,
    wait_for,
)

KEY_RE = re.compile(r"^frk_[a-f0-9]{12}_[A-Za-z0-9_-]{43}$")
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}


def freight(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def envelope(response: httpx.Response) -> dict[str, Any]:
    """The error of a response in its protocol's envelope: OpenAI's, or Anthropic's under /v1/messages."""
    body = response.json()
    if response.request.url.path.startswith("/v1/messages"):
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"} and body["request_id"], body
    else:
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    # An HTTP intake of alpha's (docs/intake.md): its tickets are walked with beta's key below.
    intake = f'\n[intake."alpha-web"]\nkind = "http"\nproject = "alpha"\nmodel = "{SCRIPTED}"\n'
    s = make_server(config_text(extra=intake), start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


def keys(server: FreightServer) -> dict[str, str]:
    found: dict[str, str] = server.keys  # type: ignore[attr-defined]
    return found


@pytest.fixture(scope="module")
def alpha(server: FreightServer) -> Iterator[openai.OpenAI]:
    with server.client(api_key=keys(server)["alpha"]) as c:
        yield c


@pytest.fixture(scope="module")
def beta(server: FreightServer) -> Iterator[openai.OpenAI]:
    with server.client(api_key=keys(server)["beta"]) as c:
        yield c


def raw(server: FreightServer, key: str | None = None, header: str = "authorization") -> httpx.Client:
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "authorization" else key
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout_s: float = 30) -> Any:
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b, timeout_s,
                    f"{batch_id} to finish")


# ---- keys ----------------------------------------------------------------------------------


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = freight("keys", "create", "--project", "team-a", "--data-dir", data, cwd=tmp_path)
    assert made.returncode == 0, made
    key = made.stdout.strip().splitlines()[-1]
    assert KEY_RE.match(key), made.stdout
    assert "stores only its hash" in made.stderr
    secret = key[len("frk_") + 13:]
    key_id = key[len("frk_"):len("frk_") + 12]
    for path in data.glob("freight.db*"):
        blob = path.read_bytes()
        assert secret.encode() not in blob and key.encode() not in blob, f"the key is readable in {path.name}"
    with sqlite3.connect(data / "freight.db") as c:
        ((project, stored_hash),) = c.execute("SELECT project, secret_hash FROM api_keys WHERE id=?", (key_id,))
    assert project == "team-a" and re.fullmatch(r"[0-9a-f]{64}", stored_hash)

    second = freight("keys", "create", "--project", "team-a", "--data-dir", data, cwd=tmp_path)
    assert second.stdout.strip().splitlines()[-1] != key

    listed = freight("keys", "list", "--data-dir", data, cwd=tmp_path)
    assert listed.returncode == 0 and key_id in listed.stdout and "team-a" in listed.stdout
    assert secret not in listed.stdout

    bad = freight("keys", "create", "--project", "../etc", "--data-dir", data, cwd=tmp_path)
    assert bad.returncode == 2 and "invalid project name" in bad.stderr, bad

    revoked = freight("keys", "revoke", key_id, "--data-dir", data, cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked" in freight("keys", "list", "--data-dir", data, cwd=tmp_path).stdout
    unknown = freight("keys", "revoke", "000000000000", "--data-dir", data, cwd=tmp_path)
    assert unknown.returncode == 1 and "No API key" in unknown.stderr


def test_serve_without_keys_refuses_a_public_address(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    done = freight("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", tmp_path / "data",
                   "--config", config, cwd=tmp_path)
    assert done.returncode == 1, done
    assert "refusing to serve on 0.0.0.0" in done.stderr and "freight keys create" in done.stderr


def test_serve_without_keys_says_it_is_loopback_only(make_server: Callable[..., FreightServer]) -> None:
    s = make_server(config_text())
    assert "no API keys: loopback only" in s.log_tail()
    with raw(s) as c:
        assert c.get("/v1/batches").status_code == 200  # no key needed: everything is project "default"


def test_every_request_needs_a_valid_key(server: FreightServer) -> None:
    assert "API keys required" in server.log_tail()
    key = keys(server)["alpha"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with raw(server) as c:
        paths = c.get("/openapi.json", headers={"authorization": f"Bearer {key}"}).json()["paths"]
        assert c.get("/health").status_code == 200
        for path, operations in paths.items():
            if path == "/health":
                continue
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in operations:
                response = c.request(method.upper(), concrete)
                assert response.status_code == 401, (method, path, response.text)
                error = envelope(response)
                assert error["type"] == "authentication_error", (method, path, error)
                assert error.get("code", "invalid_api_key") == "invalid_api_key"
                assert response.headers["x-request-id"]
        for bad in ("test", forged, "frk_000000000000_" + "A" * 43, "Basic abc"):
            response = c.get("/v1/files", headers={"authorization": f"Bearer {bad}"})
            assert response.status_code == 401 and envelope(response)["code"] == "invalid_api_key"
        assert c.get("/v1/files", headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/v1/files", headers={"x-api-key": key}).status_code == 200
        assert c.get("/v1/files", headers={"authorization": f"bearer  {key}"}).status_code == 200
    with server.client(api_key="wrong") as sdk, pytest.raises(openai.AuthenticationError) as info:
        sdk.batches.list()
    assert info.value.code == "invalid_api_key"


def test_a_new_key_works_and_a_revoked_one_stops_at_once(server: FreightServer) -> None:
    key = server.create_key("gamma")  # the server is running: no restart needed
    with raw(server, key) as c:
        assert c.get("/v1/batches").status_code == 200
        done = freight("keys", "revoke", key, "--data-dir", server.data_dir, cwd=server.config.parent)
        assert done.returncode == 0, done
        response = c.get("/v1/batches")
        assert response.status_code == 401 and envelope(response)["code"] == "invalid_api_key"


# ---- projects ------------------------------------------------------------------------------

#: Routes that hold no project's data: the same for everyone.
SHARED = {"/health", "/v1/models", "/v1/models/{model_id}", "/v1/embeddings", "/v1/chat/completions",
          "/v1/completions", "/v1/messages"}
MESSAGE_BATCHES = "/v1/messages/batches"


def test_another_projects_ids_are_404_on_every_route(server: FreightServer, alpha: openai.OpenAI,
                                                      beta: openai.OpenAI) -> None:
    # alpha: a finished batch with an output and an error file, and a slow one still running
    lines = [request_line(f"r{i}", **({"status": 400} if i == 3 else {})) for i in range(6)]
    f = alpha.files.create(file=("a.jsonl", jsonl_bytes(lines)), purpose="batch")
    done = alpha.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                                extra_headers={"Idempotency-Key": "shared-key"})
    done = wait_terminal(alpha, done.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    slow_file = alpha.files.create(file=("slow.jsonl", jsonl_bytes(
        [request_line(f"s{i}", model=SCRIPTED_SLOW, sleep_s=2.0) for i in range(40)])), purpose="batch")
    running = alpha.batches.create(input_file_id=slow_file.id, endpoint=CHAT, completion_window="24h")

    file_ids = [f.id, done.output_file_id, done.error_file_id, slow_file.id]
    batch_ids = [done.id, running.id]
    walked: set[str] = set()
    beta_key = keys(server)["beta"]
    unknown_file, unknown_batch = "file-" + "0" * 24, "batch_" + "0" * 24
    paths = set(httpx.get(server.url + "/openapi.json", headers={"x-api-key": beta_key}).json()["paths"])
    message_batches = [p for p in paths if p.startswith(MESSAGE_BATCHES)]
    message_batch_ids: list[str] = []
    if message_batches:  # the Anthropic Message Batches API: one ended batch and one running
        with raw(server, keys(server)["alpha"], header="x-api-key") as c:
            params = {"model": SCRIPTED, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            ended = c.post(MESSAGE_BATCHES, json={"requests": [{"custom_id": "m0", "params": params}]}).json()
            slow = {**params, "model": SCRIPTED_SLOW,
                    "messages": [{"role": "user", "content": '#script {"sleep_s": 1.0}'}]}
            busy = c.post(MESSAGE_BATCHES, json={"requests": [{"custom_id": f"m{i}", "params": slow}
                                                              for i in range(40)]}).json()
            message_batch_ids = [ended["id"], busy["id"]]
            wait_for(lambda: c.get(f"{MESSAGE_BATCHES}/{ended['id']}").json()["processing_status"] == "ended",
                     30, "the message batch to end")

    def same_as_unknown(response: httpx.Response, real: str, unknown: httpx.Response, fake: str) -> None:
        assert response.status_code == 404 == unknown.status_code, response.text
        assert envelope(response) == {**envelope(unknown), "message": envelope(unknown)["message"].replace(
            fake, real)}, "a 404 for another project's id must look exactly like one for an unknown id"

    with raw(server, beta_key) as c:
        for fid in file_ids:
            for method, path in (("GET", "/v1/files/{file_id}"), ("GET", "/v1/files/{file_id}/content"),
                                 ("DELETE", "/v1/files/{file_id}")):
                same_as_unknown(c.request(method, path.format(file_id=fid)), fid,
                                c.request(method, path.format(file_id=unknown_file)), unknown_file)
                walked.add(path)
        for bid in batch_ids:
            for method, path in (("GET", "/v1/batches/{batch_id}"), ("POST", "/v1/batches/{batch_id}/cancel"),
                                 ("GET", "/v1/batches/{batch_id}/partial"), ("POST", "/v1/batches/{batch_id}/pause"),
                                 ("POST", "/v1/batches/{batch_id}/resume"),
                                 ("POST", "/v1/batches/{batch_id}/priority")):
                body = {"priority": 5} if path.endswith("/priority") else None
                same_as_unknown(c.request(method, path.format(batch_id=bid), json=body), bid,
                                c.request(method, path.format(batch_id=unknown_batch), json=body), unknown_batch)
                walked.add(path)
        # alpha's webhook endpoint (docs/webhooks.md): beta's key finds none of it
        with raw(server, keys(server)["alpha"]) as a:
            hook = a.post("/v1/webhook_endpoints", json={"name": "alpha-hook", "url": "http://127.0.0.1:9/hook",
                                                          "event_types": ["batch.completed"]}).json()
        unknown_hook = hook["id"][:-6] + "000000"
        for method, path in (("GET", "/v1/webhook_endpoints/{endpoint_id}"),
                             ("POST", "/v1/webhook_endpoints/{endpoint_id}"),
                             ("POST", "/v1/webhook_endpoints/{endpoint_id}/rotate_secret"),
                             ("POST", "/v1/webhook_endpoints/{endpoint_id}/test"),
                             ("DELETE", "/v1/webhook_endpoints/{endpoint_id}")):
            body = ({"name": "renamed"} if method == "POST" and path.endswith("}") else
                    {"event_type": "batch.completed"} if path.endswith("/test") else None)
            same_as_unknown(c.request(method, path.format(endpoint_id=hook["id"]), json=body), hook["id"],
                            c.request(method, path.format(endpoint_id=unknown_hook), json=body), unknown_hook)
            walked.add(path)
        assert hook["id"] not in {e["id"] for e in c.get("/v1/webhook_endpoints").json()["data"]}
        walked.add("/v1/webhook_endpoints")
        # the event types are the same list for every project: nothing of alpha's is in it
        assert c.get("/v1/webhook_event_types").status_code == 200
        walked.add("/v1/webhook_event_types")
        intake, unknown_intake = "/v1/freight/intake/{name}", "/v1/freight/intake/{name}/{ticket_id}"
        with raw(server, keys(server)["alpha"]) as a:
            ticket = a.post("/v1/freight/intake/alpha-web", json={"body": {"messages": []}}).json()["id"]
        same_as_unknown(c.post(intake.format(name="alpha-web"), json={"body": {}}), "alpha-web",
                        c.post(intake.format(name="nobody-web"), json={"body": {}}), "nobody-web")
        same_as_unknown(c.get(unknown_intake.format(name="alpha-web", ticket_id=ticket)), "alpha-web",
                        c.get(unknown_intake.format(name="nobody-web", ticket_id=ticket)), "nobody-web")
        walked |= {intake, unknown_intake}
        unknown_message_batch = "msgbatch_" + "0" * 24
        for mid in message_batch_ids:
            for method, path in (("GET", MESSAGE_BATCHES + "/{message_batch_id}"),
                                 ("POST", MESSAGE_BATCHES + "/{message_batch_id}/cancel"),
                                 ("DELETE", MESSAGE_BATCHES + "/{message_batch_id}"),
                                 ("GET", MESSAGE_BATCHES + "/{message_batch_id}/results"),
                                 ("POST", MESSAGE_BATCHES + "/{message_batch_id}/pause"),
                                 ("POST", MESSAGE_BATCHES + "/{message_batch_id}/resume"),
                                 ("POST", MESSAGE_BATCHES + "/{message_batch_id}/priority")):
                body = {"priority": 5} if path.endswith("/priority") else None
                same_as_unknown(c.request(method, path.format(message_batch_id=mid), json=body), mid,
                                c.request(method, path.format(message_batch_id=unknown_message_batch), json=body),
                                unknown_message_batch)
                walked.add(path)
        if message_batches:
            listed_mb = c.get(MESSAGE_BATCHES, params={"limit": 1000}).json()
            assert not {item["id"] for item in listed_mb["data"]} & set(message_batch_ids)
            for mid in message_batch_ids:
                for cursor in ("after_id", "before_id"):
                    page = c.get(MESSAGE_BATCHES, params={cursor: mid}).json()
                    assert page["data"] == [] and page["has_more"] is False, page
            walked.add(MESSAGE_BATCHES)

        listed = c.get("/v1/files").json()
        assert not {item["id"] for item in listed["data"]} & set(file_ids)
        for fid in file_ids:
            page = c.get("/v1/files", params={"after": fid}).json()
            assert page["data"] == [] and page["has_more"] is False
        walked.add("/v1/files")
        assert not {item["id"] for item in c.get("/v1/batches").json()["data"]} & set(batch_ids)
        for bid in batch_ids:
            page = c.get("/v1/batches", params={"after": bid}).json()
            assert page["data"] == [] and page["has_more"] is False
        walked.add("/v1/batches")

        # creating a batch from another project's file: the same 400 as for a file that does not exist
        theirs = c.post("/v1/batches", json={"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"})
        nobody = c.post("/v1/batches", json={"input_file_id": unknown_file, "endpoint": CHAT,
                                             "completion_window": "24h"})
        assert theirs.status_code == 400 == nobody.status_code
        assert envelope(theirs)["message"] == envelope(nobody)["message"].replace(unknown_file, f.id)
        # an idempotency key is per project: beta's "shared-key" is not alpha's
        own = c.post("/v1/files", files={"file": ("b.jsonl", jsonl_bytes([request_line("b0")]))},
                     data={"purpose": "batch"}).json()
        mine = c.post("/v1/batches", headers={"Idempotency-Key": "shared-key"},
                      json={"input_file_id": own["id"], "endpoint": CHAT, "completion_window": "24h"}).json()
        assert mine["id"] != done.id and mine["input_file_id"] == own["id"]

    assert paths - SHARED == walked, f"routes not walked with another project's key: {paths - SHARED - walked}"

    # nothing of alpha's was touched by beta's attempts
    assert {x.id for x in alpha.files.list()} >= set(file_ids)
    assert alpha.batches.retrieve(running.id).status in ("validating", "in_progress")
    assert alpha.files.content(done.output_file_id).content
    alpha.batches.cancel(running.id)
    with raw(server, keys(server)["alpha"], header="x-api-key") as c:
        for mid in message_batch_ids:
            assert c.get(f"{MESSAGE_BATCHES}/{mid}").status_code == 200, "beta's delete and cancel did nothing"
        if message_batch_ids:
            assert c.get(f"{MESSAGE_BATCHES}/{message_batch_ids[1]}").json()["cancel_initiated_at"] is None
            c.post(f"{MESSAGE_BATCHES}/{message_batch_ids[1]}/cancel")
    # and alpha does not see beta's
    with pytest.raises(openai.NotFoundError):
        alpha.files.retrieve(own["id"])
    with pytest.raises(openai.NotFoundError):
        alpha.batches.retrieve(mine["id"])


# ---- per-project limits ----------------------------------------------------------------------

LIMITS = "max_active_batches_per_project = 2\nmax_queued_requests_per_project = 50\n"


@pytest.fixture(scope="module")
def limited(make_server: Callable[..., FreightServer]) -> FreightServer:
    s = make_server(config_text(limits=LIMITS), start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


def _batch_of(client: openai.OpenAI, n: int, prefix: str, sleep_s: float = 0.0) -> Any:
    lines = [request_line(f"{prefix}{i}", model=SCRIPTED_SLOW if sleep_s else SCRIPTED,
                          **({"sleep_s": sleep_s} if sleep_s else {})) for i in range(n)]
    f = client.files.create(file=(f"{prefix}.jsonl", jsonl_bytes(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")


def test_per_project_limits_are_clear_429s_and_400s(limited: FreightServer) -> None:
    with limited.client(api_key=keys(limited)["alpha"]) as a, limited.client(api_key=keys(limited)["beta"]) as b:
        first = _batch_of(a, 30, "a", sleep_s=2.0)  # slow: stays active throughout
        with pytest.raises(openai.RateLimitError) as info:
            _batch_of(a, 30, "b")  # 30 queued + 30 > 50
        assert info.value.code == "too_many_queued_requests"
        assert info.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        assert "50" in info.value.message
        # Only finished batches lift it: the SDK is told not to retry within the second (it did, twice).
        assert info.value.response.headers.get("x-should-retry") == "false"
        second = _batch_of(a, 10, "c", sleep_s=2.0)  # 40 queued: fits
        with pytest.raises(openai.RateLimitError) as info:
            _batch_of(a, 1, "d")
        assert info.value.code == "too_many_active_batches"
        assert info.value.response.headers.get("x-should-retry") == "false"
        with pytest.raises(openai.BadRequestError) as too_big:
            _batch_of(a, 51, "e")  # could never fit
        assert too_big.value.code == "too_many_queued_requests"

        other = _batch_of(b, 30, "x")  # another project is not held back by alpha's work
        assert wait_terminal(b, other.id).status == "completed"

        a.batches.cancel(first.id)
        a.batches.cancel(second.id)
        wait_terminal(a, first.id)
        wait_terminal(a, second.id)
        third = _batch_of(a, 30, "f")  # room again
        assert wait_terminal(a, third.id).status == "completed"
    # a refused create made nothing
    with limited.client(api_key=keys(limited)["alpha"]) as a:
        assert len(a.batches.list().data) == 3


def test_upload_over_the_size_limit_is_refused_early(make_server: Callable[..., FreightServer]) -> None:
    s = make_server(config_text(limits="max_upload_bytes = 100000\n"))
    with s.client() as c, pytest.raises(openai.APIStatusError) as info:
        c.files.create(file=("big.bin", b"x" * 200_000), purpose="user_data")
    assert info.value.status_code == 413 and info.value.code == "file_too_large"
