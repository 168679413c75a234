"""Batches on remote models through a real ``freight serve``, driven by the official ``openai`` SDK.

The models point at upstream simulators (``freight.testing.upstream``) on 127.0.0.1:

- ``remote-chaos``: 10% 5xx, 5% never answered (``timeout_s = 2``), 429 bursts: every request still
  succeeds, each exactly once in the output file, and the upstream answered each successfully exactly once;
- ``remote-clean``: requests carrying ``"reject": true`` are refused with 400 and land, exactly those,
  in the error file with the upstream's own body;
- ``remote-wrong-key``: a key the upstream refuses (401, and its error body quotes the key).

Last, nothing the server printed, no result file and no API response contains either secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import DefaultHttpxClient, OpenAI

from freight.testing.upstream import CHAT, EMBEDDINGS, RESPONSES, Upstream, UpstreamConfig, build_response

SECRET = "sk-remote-7d1e9a3c5b2f4e6a8c0d1b3f5a7c9e2d"
WRONG = "sk-wrong-0f2e4d6c8b0a1f3e5d7c9b1a3f5e7d9c"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# Throttled two ways: in windows (a quarter of every 0.6 s) and at random (5% of requests, so that a batch
# that runs between two windows on a fast machine still meets a 429: 0.95**200 < 1e-4).
CHAOS = UpstreamConfig(api_key=SECRET, error_rate=0.10, timeout_rate=0.05, throttle_every_s=0.6, throttle_for_s=0.15,
                       overload_rate=0.05, overload_retry_after_s=0.05,
                       latency_s=0.01, latency_dist="exponential", seed=11)
CLEAN = UpstreamConfig(api_key=SECRET, echo_key_in_errors=True, latency_s=0.005)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Captured:
    """Every API response body the SDK received."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def hook(self, response: Any) -> None:
        response.read()
        self.bodies.append(response.content)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream(CHAOS) as chaos, Upstream(CLEAN) as clean:
        yield chaos, clean


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream]) -> Iterator[dict[str, Any]]:
    chaos, clean = upstreams
    root = tmp_path_factory.mktemp("remote")
    config = root / "freight.toml"
    config.write_text(f"""\
[models."remote-chaos"]
backend = "openai"
base_url = "{chaos.base_url}"
api_key_env = "SIM_UPSTREAM_KEY"
upstream_model = "sim-chat"
timeout_s = 2
chunk_size = 4
max_concurrency = 64

[models."remote-clean"]
backend = "openai"
base_url = "{clean.base_url}"
api_key_env = "SIM_UPSTREAM_KEY"
upstream_model = "sim-clean"
rpm = 6000
tpm = 1000000

[models."remote-wrong-key"]
backend = "openai"
base_url = "{clean.base_url}"
api_key_env = "SIM_WRONG_KEY"

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
retry_max_delay_s = 2
max_attempts = 8

[limits]
completion_window_min = "1s"
""")
    port = free_port()
    log_path = root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
    env.update(SIM_UPSTREAM_KEY=SECRET, SIM_WRONG_KEY=WRONG, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "freight", "-v", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(root / "data"), "--config", str(config)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"freight serve exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"freight serve did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    captured = Captured()
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30,
                    http_client=DefaultHttpxClient(event_hooks={"response": [captured.hook]}))
    state: dict[str, Any] = {"client": client, "captured": captured, "log": log_path, "files": []}
    yield state
    client.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def line(custom_id: str, model: str, url: str = CHAT, **extra: Any) -> dict[str, Any]:
    if url == CHAT:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": f"Tell me about item {custom_id}."}],
                                "max_tokens": 8 + len(custom_id) * 3}
    elif url == EMBEDDINGS:
        body = {"input": f"item {custom_id}"}
    else:
        body = {"input": f"Describe item {custom_id}.", "max_output_tokens": 16}
    body.update(model=model, user=custom_id, **extra)
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def run_batch(state: dict[str, Any], lines: list[dict[str, Any]], endpoint: str = CHAT,
              timeout_s: float = 45) -> tuple[Any, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    client: OpenAI = state["client"]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = client.files.create(file=("input.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    while batch.status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch not finished in {timeout_s} s: {batch.request_counts}"
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)

    def read(file_id: str | None) -> dict[str, dict[str, Any]]:
        if file_id is None:
            return {}
        content = client.files.content(file_id).read()
        state["files"].append(content)
        rows = [json.loads(x) for x in content.decode().splitlines()]
        by_id = {row["custom_id"]: row for row in rows}
        assert len(by_id) == len(rows), "a custom_id appears twice"
        return by_id

    return batch, read(batch.output_file_id), read(batch.error_file_id)


def expected_body(upstream: Upstream, request_line: dict[str, Any], model: str) -> dict[str, Any]:
    body = {**request_line["body"], "model": model}
    return build_response(request_line["url"], body, upstream.config)[0]


def test_chaos_batch_completes_every_request_exactly_once(server: dict[str, Any],
                                                         upstreams: tuple[Upstream, Upstream]) -> None:
    chaos, _ = upstreams
    chaos.reset_stats()
    lines = [line(f"c{i:03d}", "remote-chaos") for i in range(200)]
    batch, output, errors = run_batch(server, lines)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (200, 200, 0)
    assert errors == {}
    assert set(output) == {x["custom_id"] for x in lines}
    for request_line in lines:
        row = output[request_line["custom_id"]]
        assert row["error"] is None
        assert row["response"]["status_code"] == 200
        assert row["response"]["request_id"].startswith("req_sim")
        assert row["response"]["body"] == expected_body(chaos, request_line, "sim-chat")
    stats = chaos.stats()
    assert all(stats.ok(x["custom_id"]) == 1 for x in lines), "each request answered successfully exactly once"
    assert stats.auth_ok
    # The faults did happen (and were retried).
    assert stats.count("timeout") >= 1
    assert sum(stats.count(s) for s in ("500", "502", "503")) >= 5
    assert stats.count("throttled") >= 1


def test_rejected_requests_go_to_the_error_file_with_the_upstream_body(
        server: dict[str, Any], upstreams: tuple[Upstream, Upstream]) -> None:
    _, clean = upstreams
    clean.reset_stats()
    rejected = {f"r{i:02d}" for i in range(0, 30, 4)}
    marker: dict[str, Any] = {"reject": True}
    lines = [line(f"r{i:02d}", "remote-clean", **(marker if f"r{i:02d}" in rejected else {})) for i in range(30)]
    batch, output, errors = run_batch(server, lines)
    assert batch.status == "completed"
    assert set(errors) == rejected
    assert set(output) == {x["custom_id"] for x in lines} - rejected
    for row in errors.values():
        assert row["error"] is None
        assert row["response"]["status_code"] == 400
        assert row["response"]["body"] == {"error": {"message": "Unrecognized request argument supplied: reject",
                                                     "type": "invalid_request_error", "param": "reject",
                                                     "code": None}}
    stats = clean.stats()
    assert all(stats.per_key[key] == {"rejected": 1} for key in rejected), "a 400 is final: sent once"
    assert all(stats.ok(x["custom_id"]) == 1 for x in lines if x["custom_id"] not in rejected)


@pytest.mark.parametrize("endpoint", [EMBEDDINGS, RESPONSES])
def test_other_endpoints(server: dict[str, Any], upstreams: tuple[Upstream, Upstream], endpoint: str) -> None:
    _, clean = upstreams
    lines = [line(f"{endpoint[4:7]}{i}", "remote-clean", url=endpoint) for i in range(5)]
    batch, output, errors = run_batch(server, lines, endpoint)
    assert batch.status == "completed" and not errors
    for request_line in lines:
        assert output[request_line["custom_id"]]["response"]["body"] == expected_body(clean, request_line,
                                                                                     "sim-clean")


def test_refused_key_is_final_and_scrubbed(server: dict[str, Any]) -> None:
    lines = [line(f"w{i}", "remote-wrong-key") for i in range(3)]
    batch, output, errors = run_batch(server, lines)
    assert batch.status == "completed" and not output
    assert set(errors) == {"w0", "w1", "w2"}
    for row in errors.values():
        assert row["response"]["status_code"] == 401
        assert row["response"]["body"]["error"]["message"] == "Incorrect API key provided: ***."


def test_no_secret_anywhere(server: dict[str, Any]) -> None:
    """Runs last: the server's output, every result file and every API response seen by the SDK."""
    client: OpenAI = server["client"]
    models = client.models.list()
    assert {"remote-chaos", "remote-clean", "remote-wrong-key"} <= {m.id for m in models.data}
    for batch in client.batches.list():
        client.batches.retrieve(batch.id)
    log_text = Path(server["log"]).read_bytes()
    assert b"remote-chaos" in log_text  # the log is the server's (it names its models)
    haystacks = [log_text, *server["files"], *server["captured"].bodies]
    assert len(server["files"]) >= 5
    for secret in (SECRET, WRONG):
        for part in (secret, secret[10:30]):
            assert all(part.encode() not in hay for hay in haystacks), f"a secret leaked: {part[:6]}…"
