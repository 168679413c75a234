"""What ``freight serve`` logs (issue 10, item 9), read from a real server's output.

- an access line per request (method, path, status, duration, project, request id), 4xx and 5xx
  included, from freight's own middleware: uvicorn's access log stays off (no doubles);
- one line per batch transition with the batch id, project, old and new status and counts: a batch
  that fails validation says ``failed``, a cancelled one says ``cancelled``;
- ``--log-format json`` / ``FREIGHT_LOG_FORMAT=json``: every line one JSON object with its fields;
- ``-v``: why each request failed, at debug;
- never a key: not the API key, not a wrong key, not a secret in a query string.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import (
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    config_text,
    freight_command,
    jsonl_bytes,
    request_line,
    subprocess_env,
    wait_for,
)

from freight.cli.logs import JsonFormatter, TextFormatter
from freight.domain.keys import parse_token

WRONG_KEY = "frk_000000000000_" + "W" * 43
QUERY_SECRET = "sk-query-secret-0123456789"


class LoggedServer(FreightServer):
    """``freight serve`` with extra arguments and environment."""

    def __init__(self, *args: Any, serve_args: tuple[str, ...] = (), global_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.serve_args = serve_args
        self.global_args = global_args
        self.env = env or {}

    def spawn(self) -> None:
        import subprocess

        cmd = [*freight_command(), *self.global_args, "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--config", str(self.config), *self.serve_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.config.parent, env={**subprocess_env(), **self.env},
                                         start_new_session=True)


@dataclass
class Session:
    """What one server's log must account for."""

    key: str
    log: str = ""
    #: (method, path, status, x-request-id) of every response the client got
    responses: list[tuple[str, str, int, str]] = field(default_factory=list)
    batches: dict[str, str] = field(default_factory=dict)  # what -> batch id


def wait_status(client: httpx.Client, batch_id: str, statuses: frozenset[str] | set[str]) -> dict[str, Any]:
    def look() -> dict[str, Any] | None:
        b: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        return b if b["status"] in statuses else None

    result: dict[str, Any] = wait_for(look, 60, f"{batch_id} in {statuses}")
    return result


def drive(server: FreightServer, key: str) -> Session:
    """Requests a user makes in a day, a few of them wrong; the server is stopped at the end."""
    session = Session(key=key)

    def seen(response: httpx.Response) -> None:
        session.responses.append((response.request.method, response.request.url.path, response.status_code,
                                  response.headers["x-request-id"]))

    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=30,
                      event_hooks={"response": [seen]}) as client:
        def batch_of(lines: list[dict[str, Any]], window: str = "24h") -> str:
            f = client.post("/files", files={"file": ("in.jsonl", jsonl_bytes(lines))}, data={"purpose": "batch"})
            assert f.status_code == 200, f.text
            b = client.post("/batches", json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions",
                                              "completion_window": window})
            assert b.status_code == 200, b.text
            return str(b.json()["id"])

        completed = batch_of([request_line(f"ok-{i}") for i in range(6)])
        assert wait_status(client, completed, TERMINAL)["status"] == "completed"
        failed = batch_of([request_line("bad", model="no-such-model")])
        assert wait_status(client, failed, TERMINAL)["status"] == "failed"
        slow = batch_of([request_line(f"slow-{i}", model=SCRIPTED_SLOW, sleep_s=0.3) for i in range(24)])
        wait_status(client, slow, {"in_progress"})
        assert client.post(f"/batches/{slow}/cancel").status_code == 200
        assert wait_status(client, slow, TERMINAL)["status"] == "cancelled"
        late = batch_of([request_line(f"late-{i}", model=SCRIPTED_SLOW, sleep_s=0.5) for i in range(40)], "1s")
        assert wait_status(client, late, TERMINAL)["status"] == "expired"
        session.batches = {"completed": completed, "failed": failed, "cancelled": slow, "expired": late}

        assert client.get("/files/file-doesnotexist").status_code == 404
        assert client.get("/batches", params={"limit": "abc", "api_key": QUERY_SECRET}).status_code == 400
        assert client.get("/files", headers={"authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
        assert client.get("/files", headers={"authorization": ""}).status_code == 401
        assert client.post("/files", content=b"--x\r\nbroken",
                           headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 400
    time.sleep(0.3)  # the access line is written just after the response is sent
    server.stop()
    session.log = server.log_path.read_text(errors="replace")
    return session


def start(tmp: Path, **kwargs: Any) -> tuple[LoggedServer, str]:
    config = tmp / "freight.toml"
    config.write_text(config_text())
    server = LoggedServer(tmp / "data", config, log_path=tmp / "server.log", **kwargs)
    key = server.create_key("acme")
    server.start()
    return server, key


@pytest.fixture(scope="module")
def json_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    server, key = start(tmp_path_factory.mktemp("json"), env={"FREIGHT_LOG_FORMAT": "json"})
    try:
        yield drive(server, key)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def text_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    server, key = start(tmp_path_factory.mktemp("text"), global_args=("-v",))
    try:
        yield drive(server, key)
    finally:
        server.stop()


def no_key_material(session: Session) -> None:
    # The secret is everything after the id: it may hold "_" itself (urlsafe base64).
    parsed, wrong = parse_token(session.key), parse_token(WRONG_KEY)
    assert parsed is not None and wrong is not None
    for needle in (session.key, parsed[1], WRONG_KEY, wrong[1], QUERY_SECRET, "Bearer"):
        assert needle not in session.log, f"{needle[:12]}… appears in the log"


# ---- JSON ----------------------------------------------------------------------------------------

def entries(session: Session) -> list[dict[str, Any]]:
    lines = [line for line in session.log.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


def test_json_every_line_is_an_object_with_its_fields(json_session: Session) -> None:
    logs = entries(json_session)
    assert logs and all({"ts", "level", "logger", "message"} <= set(e) for e in logs)
    assert any(e["logger"] == "freight.cli" and "serving http://127.0.0.1" in e["message"] for e in logs)


def test_json_access_log_has_every_request(json_session: Session) -> None:
    access = {e["request_id"]: e for e in entries(json_session) if e["logger"] == "freight.access"}
    assert json_session.responses
    for method, path, status, request_id in json_session.responses:
        e = access.get(request_id)
        assert e is not None, f"no access line for {method} {path} {status}"
        assert (e["method"], e["path"], e["status"]) == (method, path, status)
        assert isinstance(e["duration_ms"], float | int) and e["duration_ms"] >= 0
        assert e["project"] == (None if status == 401 else "acme"), e
        assert e["message"].startswith(f"{method} {path} {status} ")
    statuses = {e["status"] for e in access.values()}
    assert {200, 400, 401, 404} <= statuses
    assert all(e["path"] != "/v1/batches?limit=abc" and "?" not in e["path"] for e in access.values())


def transitions(logs: list[dict[str, Any]], batch_id: str) -> list[tuple[str | None, str]]:
    return [(e["old_status"], e["new_status"]) for e in logs
            if e.get("event") == "batch_transition" and e["batch_id"] == batch_id]


def test_json_one_line_per_batch_transition(json_session: Session) -> None:
    logs = entries(json_session)
    b = json_session.batches
    assert transitions(logs, b["completed"]) == [(None, "validating"), ("validating", "in_progress"),
                                                  ("in_progress", "finalizing"), ("finalizing", "completed")]
    assert transitions(logs, b["failed"]) == [(None, "validating"), ("validating", "failed")]
    assert transitions(logs, b["cancelled"]) == [(None, "validating"), ("validating", "in_progress"),
                                                  ("in_progress", "cancelling"), ("cancelling", "cancelled")]
    done = next(e for e in logs if e.get("event") == "batch_transition" and e["new_status"] == "completed")
    assert (done["project"], done["total"], done["completed"], done["failed"]) == ("acme", 6, 6, 0)
    assert done["batch_id"] in done["message"] and "acme" in done["message"]
    failed = next(e for e in logs if e.get("event") == "batch_transition" and e["new_status"] == "failed")
    assert failed["validation_errors"] == 1 and "1 validation error" in failed["message"]
    assert transitions(logs, b["expired"]) == [(None, "validating"), ("validating", "in_progress"),
                                                ("in_progress", "expired")]
    cancelled = next(e for e in logs if e.get("event") == "batch_transition" and e["new_status"] == "cancelled")
    assert cancelled["total"] == 24 and cancelled["completed"] + cancelled["failed"] == 24
    assert not [e for e in logs if e["message"] in ("batch validated", "batch closed", "batch completed")]


def test_json_no_key_material(json_session: Session) -> None:
    no_key_material(json_session)


# ---- text, with -v ---------------------------------------------------------------------------------

def test_text_access_lines_and_no_doubles(text_session: Session) -> None:
    log = text_session.log
    for method, path, status, request_id in text_session.responses:
        pattern = (rf"INFO freight\.access: {re.escape(method)} {re.escape(path)} {status} \d+\.\d ms .*"
                   rf"request_id={re.escape(request_id)}")
        assert re.search(pattern, log), f"no access line for {method} {path} {status}"
    assert re.search(r"freight\.access: GET /v1/files/file-doesnotexist 404 .*project=acme", log)
    assert 'HTTP/1.1"' not in log, "uvicorn's own access log is on too"
    assert "color_message" not in log


def test_text_transitions_name_the_batch(text_session: Session) -> None:
    b = text_session.batches
    log = text_session.log
    assert f"batch {b['completed']} validating -> in_progress (project acme; 6 total, 0 completed, 0 failed)" in log
    assert f"batch {b['completed']} finalizing -> completed (project acme; 6 total, 6 completed, 0 failed)" in log
    assert f"batch {b['failed']} validating -> failed (project acme; 0 total" in log
    assert f"batch {b['cancelled']} cancelling -> cancelled (project acme; 24 total" in log
    assert f"batch {b['expired']} in_progress -> expired (project acme; 40 total" in log


def test_text_verbose_says_why_requests_failed(text_session: Session) -> None:
    log = text_session.log
    assert re.search(r"DEBUG freight\.api: request failed: 404: No such File object: file-doesnotexist", log)
    assert re.search(r"DEBUG freight\.api: request refused: invalid API key", log)
    assert re.search(r"DEBUG freight\.api: request failed: 400 invalid_value", log)


def test_text_no_key_material(text_session: Session) -> None:
    no_key_material(text_session)


# ---- the formatters ---------------------------------------------------------------------------------

def record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    r = logging.LogRecord("freight.engine", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_text_format_appends_fields_the_message_does_not_say() -> None:
    line = TextFormatter().format(record("batch step failed", batch_id="batch_x", event="batch_step_failed"))
    assert line.endswith("INFO freight.engine: batch step failed batch_id=batch_x")
    line = TextFormatter().format(record("batch %s done", "batch_x", batch_id="batch_x"))
    assert line.endswith("batch batch_x done")


def test_json_format_has_every_field() -> None:
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        import sys

        r = record("claim failed", event="claim_failed", batch_id="batch_x", path=Path("/x"))
        r.exc_info = sys.exc_info()
    e = json.loads(JsonFormatter().format(r))
    assert e["message"] == "claim failed" and e["level"] == "info" and e["logger"] == "freight.engine"
    assert (e["event"], e["batch_id"], e["path"]) == ("claim_failed", "batch_x", "/x")
    assert "No space left on device" in e["exc_info"] and e["ts"].endswith("+00:00")


def test_an_unknown_log_format_is_a_usage_error() -> None:
    import subprocess

    env = {**subprocess_env(), "FREIGHT_LOG_FORMAT": "xml"}
    done = subprocess.run([*freight_command(), "list"], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "unknown log format 'xml'" in done.stderr


def test_the_log_format_flag(tmp_path: Path) -> None:
    """``--log-format json`` (the sessions above use FREIGHT_LOG_FORMAT=json and the default, text)."""
    server, _ = start(tmp_path, serve_args=("--log-format", "json"))
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        time.sleep(0.3)
    finally:
        server.stop()
    logs = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
    assert [(e["method"], e["path"], e["status"]) for e in logs if e["logger"] == "freight.access"] == [
        ("GET", "/health", 200)] * len([e for e in logs if e["logger"] == "freight.access"])
    assert any(e["logger"] == "freight.access" for e in logs)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("python_multipart", "httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_setup_logging_keeps_a_clients_broken_body_at_debug(restore_logging: None) -> None:
    import io

    from freight.cli.logs import setup_logging

    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    setup_logging("info", "json", stream=out)  # again (the group's options, then serve's): one handler
    logging.getLogger("python_multipart.multipart").warning("Did not find CRLF at end of boundary (12)")
    logging.getLogger("freight.engine").info("batch %s done", "batch_x", extra={"batch_id": "batch_x"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger"], e["message"], e["batch_id"]) for e in lines] == [
        ("freight.engine", "batch batch_x done", "batch_x")]
