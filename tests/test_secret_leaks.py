"""An upstream API key never leaks, whatever a hostile upstream does with it.

The hostile simulator (freight.testing.upstream.hostile) quotes the key it received plainly, with
``\\/`` escapes, with one character ``\\u``-escaped in a pretty-printed body, and as the
``x-request-id``; in 200s, 400s and 500s. The key is given with a trailing newline, as a secret read
from a file is. Checked: the backend's results (unit tier), and then a real ``freight serve``: every
file of its data directory (output and error files, the database), the real-time answers of
``/v1/chat/completions`` and ``/v1/messages``, and everything the server logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FreightServer, jsonl_bytes

from freight.backends.openai_http import CHAT, OpenAIHTTPBackend, shared_states
from freight.backends.provider_batches import AnthropicBatchLane, OpenAIBatchLane, UpstreamError, _check
from freight.domain.errors import ConfigError
from freight.domain.requests import Failure, Result
from freight.domain.secrets import Secret
from freight.testing.upstream import Upstream, UpstreamConfig
from freight.testing.upstream.hostile import LEAK_MODES
from freight.wire import jsonx
from freight.wire.redaction import redact_body

#: A key with slashes (so that ``\\/`` changes its form) and long enough for windows to be unique.
KEY = "sk-proj/Hx9T2kq7Lw3Zp8/Rm4Vb6Nc1Yd5Je0Qa7"
ENV_NAME = "HOSTILE_UPSTREAM_KEY"
STATUSES = (200, 400, 500)


def key_forms(key: str) -> set[str]:
    """The key as a careless redactor would miss it: escaped, or any 10 characters of it."""
    forms = {key, key.replace("/", "\\/"), json.dumps(key)[1:-1]}
    for i, c in enumerate(key):
        for escape in (f"\\u{ord(c):04x}", f"\\u{ord(c):04X}", f"\\\\u{ord(c):04x}"):
            forms.add(key[:i] + escape + key[i + 1:])
    forms |= {key[i:i + 10] for i in range(len(key) - 9)}
    return forms


FORMS = key_forms(KEY)


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from strings(item)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings(v)


def assert_no_key(data: bytes | str, where: str) -> None:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    found = [form for form in FORMS if form in text]
    assert not found, f"the key shows in {where}: {found[:3]}"
    for line in text.splitlines():  # and once decoded, whatever escapes the JSON used
        try:
            value = json.loads(line)
        except ValueError:
            continue
        for s in strings(value):
            assert not [form for form in FORMS if form in s], f"the key shows (decoded) in {where}"


def leak(mode: str, status: int) -> str:
    return f"Please answer. leak={mode}/{status}"


# ---- the Secret itself -----------------------------------------------------------------------------------------------


def test_secret_is_normalised_and_a_bad_one_refused_without_showing_it() -> None:
    assert Secret.from_env("K", {"K": f"  {KEY}\r\n"}).reveal() == KEY
    assert Secret.from_env(None, {}).reveal() is None
    for bad in (KEY[:10] + "\x00" + KEY[10:], KEY[:10] + "\n" + KEY[10:], KEY + "é"):
        with pytest.raises(ConfigError, match="HOSTILE_UPSTREAM_KEY") as info:
            Secret.from_env(ENV_NAME, {ENV_NAME: bad}, '[models."m"]')
        assert_no_key(str(info.value), "the error")
    with pytest.raises(ConfigError, match="is empty"):
        Secret.from_env(ENV_NAME, {ENV_NAME: " \n"})
    with pytest.raises(ConfigError, match="is not set"):
        Secret.from_env(ENV_NAME, {})


def test_scrub_matches_every_encoding() -> None:
    secret = Secret(KEY)
    escaped = KEY[:5] + f"\\u{ord(KEY[5]):04x}" + KEY[6:]
    samples = [KEY, KEY.replace("/", "\\/"), escaped, escaped.replace("\\", "\\\\"), KEY.replace("/", "%2F"),
               f"Illegal header value b'Bearer {KEY}'"]
    for sample in samples:
        assert secret.scrub(f"x {sample} y").count("***") == 1, sample
        assert b"***" in secret.scrub_bytes(sample.encode())
    assert secret.redact({"a": [f"my {KEY}"], KEY: 1}) == ({"a": ["my ***"], "***": 1}, True)
    body, data = redact_body(secret, json.dumps({"e": KEY}, indent=2).replace("H", "\\u0048", 1).encode())
    assert body == b'{"e":"***"}' and data == {"e": "***"}
    assert redact_body(secret, f"<html>{KEY}</html>".encode())[0] == b"<html>***</html>"


def test_batch_lanes_load_the_key_the_same_way() -> None:
    env = {ENV_NAME: KEY + "\r\n"}
    openai_lane = OpenAIBatchLane("m", base_url="http://127.0.0.1:9/v1", api_key_env=ENV_NAME, env=env)
    anthropic_lane = AnthropicBatchLane("m", base_url="http://127.0.0.1:9", api_key_env=ENV_NAME, env=env)
    assert openai_lane._headers()["authorization"] == f"Bearer {KEY}"
    assert anthropic_lane._headers()["x-api-key"] == KEY
    with pytest.raises(ConfigError, match=ENV_NAME) as info:
        OpenAIBatchLane("m", base_url="http://127.0.0.1:9/v1", api_key_env=ENV_NAME, env={ENV_NAME: KEY + "\x07"})
    assert_no_key(str(info.value), "the error")
    response = httpx.Response(500, text=json.dumps({"error": KEY.replace("/", "\\/")}))
    with pytest.raises(UpstreamError) as raised:
        _check(response, "the batch", secret=Secret(KEY))
    assert_no_key(str(raised.value), "the lane's error")


# ---- the backend against the hostile upstream ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LEAK_MODES)
@pytest.mark.parametrize("status", STATUSES)
def test_backend_results_never_hold_the_key(mode: str, status: int) -> None:
    env = {ENV_NAME: KEY + "\n"}  # as read from a file
    with Upstream(UpstreamConfig(api_key=KEY)) as up:
        b = OpenAIHTTPBackend("remote", up.base_url, api_key_env=ENV_NAME, env=env, timeout_s=5)

        async def go() -> list[Result | Failure]:
            try:
                return await b.execute(CHAT, [{"model": "remote", "messages": [
                    {"role": "user", "content": leak(mode, status)}]}])
            finally:
                await b.close()

        [result] = asyncio.run(go())
        assert up.stats().auth_ok  # the key was sent without its newline
    assert not shared_states()
    assert isinstance(result, Result) and result.status_code == status, result
    assert result.body is not None and result.request_id
    assert_no_key(result.body, "the body")
    assert_no_key(result.request_id, "the request id")
    assert b"\n" not in result.body
    if mode != "request_id":
        assert b"***" in result.body
        jsonx.loads(result.body)


# ---- a real freight serve --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[Upstream]:
    with Upstream(UpstreamConfig(api_key=KEY, latency_s=0.002)) as up:
        yield up


def test_no_key_in_files_answers_or_logs(hostile: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_NAME, KEY + "\n")
    config = tmp_path / "freight.toml"
    config.write_text(f"""\
[models."remote-hostile"]
backend = "openai"
base_url = "{hostile.base_url}"
api_key_env = "{ENV_NAME}"
upstream_model = "sim-hostile"
timeout_s = 5

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
max_attempts = 2

[limits]
completion_window_min = "1s"
""")
    server = FreightServer(tmp_path / "data", config).start()
    answers: list[bytes] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": "Bearer test"}) as http:
            for mode in LEAK_MODES:
                for status in STATUSES:
                    chat = http.post("/v1/chat/completions", json={"model": "remote-hostile", "messages": [
                        {"role": "user", "content": leak(mode, status)}]})
                    messages = http.post("/v1/messages", headers={"x-api-key": "test",
                                                                   "anthropic-version": "2023-06-01"},
                                         json={"model": "remote-hostile", "max_tokens": 64, "messages": [
                                             {"role": "user", "content": leak(mode, status)}]})
                    for response in (chat, messages):
                        assert response.status_code in (200, 400, 500, 502, 503), response.text
                        answers.append(response.content)
                        answers.append(repr(response.headers.multi_items()).encode())
                    assert chat.status_code == status, (mode, status, chat.text)
            lines = [{"custom_id": f"{mode}-{status}", "method": "POST", "url": CHAT, "body": {
                "model": "remote-hostile", "messages": [{"role": "user", "content": leak(mode, status)}]}}
                for mode in LEAK_MODES for status in STATUSES]
            file_id = http.post("/v1/files", data={"purpose": "batch"},
                                files={"file": ("in.jsonl", jsonl_bytes(lines))}).json()["id"]
            batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": CHAT,
                                                   "completion_window": "24h"}).json()
            deadline = time.monotonic() + 120
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                assert time.monotonic() < deadline, batch
                time.sleep(0.1)
                batch = http.get(f"/v1/batches/{batch['id']}").json()
            assert batch["status"] == "completed", batch
            assert batch["request_counts"]["total"] == len(lines)
            for name in ("output_file_id", "error_file_id"):
                assert batch[name], batch
                content = http.get(f"/v1/files/{batch[name]}/content")
                assert content.status_code == 200
                answers.append(content.content)
            assert len(b"".join(answers[-2:]).splitlines()) == len(lines)
            assert b"***" in answers[-1] and b"***" in answers[-2]
    finally:
        server.stop()
    for i, answer in enumerate(answers):
        assert_no_key(answer, f"answer {i}")
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".db") for p in files)
    for path in [*files, server.log_path]:
        assert_no_key(path.read_bytes(), str(path))
    assert hostile.stats().auth_ok
