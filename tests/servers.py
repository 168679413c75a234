"""Helpers for tests that drive real ``freight`` processes: ports, configs, servers, clients, JSONL.

A :class:`FreightServer` runs ``freight serve`` as a subprocess on a loopback port, waits for
``GET /health``, and can be SIGKILLed and restarted on the same data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import DefaultHttpxClient, OpenAI

SCRIPTED = "freight-scripted"
#: A second scripted model with little concurrency (chunk 4 x 2 chunks): slow batches for cancel/expiry.
SCRIPTED_SLOW = "freight-scripted-slow"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


#: Where the test PostgreSQL server is (trust auth); a database to connect to while creating others.
POSTGRES_ADMIN_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")


def postgres_admin_url() -> str:
    import psycopg

    errors = []
    for url in POSTGRES_ADMIN_URLS:
        try:
            with psycopg.connect(url, connect_timeout=5):
                return url
        except psycopg.Error as exc:
            errors.append(f"{url}: {exc}")
    raise RuntimeError("no PostgreSQL server for the tests at 127.0.0.1:5432: " + "; ".join(errors))


@contextlib.contextmanager
def postgres_database(prefix: str = "freight_test") -> Iterator[str]:
    """A new, empty database with a unique name (dropped at the end); its URL."""
    import psycopg

    admin = postgres_admin_url()
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def freight_command() -> list[str]:
    """``FREIGHT_COMMAND`` (the pipeline tests' server runs from the main environment), else the venv's
    ``freight`` script next to this interpreter, else ``python -m freight``."""
    if os.environ.get("FREIGHT_COMMAND"):
        return [os.environ["FREIGHT_COMMAND"]]
    script = Path(sys.executable).parent / "freight"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "freight"]


def config_text(*, embeddings: bool = False, slow_chunk: int = 4, slow_concurrency: int = 2,
                extra: str = "", limits: str = "") -> str:
    text = f"""\
[models."{SCRIPTED}"]
backend = "scripted"

[models."{SCRIPTED_SLOW}"]
backend = "scripted"
chunk_size = {slow_chunk}
max_concurrency = {slow_concurrency}

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05

[limits]
completion_window_min = "1s"
{limits}"""
    if embeddings:
        text += f'\n[models."{EMBEDDING_MODEL}"]\nbackend = "local-embeddings"\n'
    return text + extra


def subprocess_env() -> dict[str, str]:
    """This environment without FREIGHT_* settings that would override the test's flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@dataclass
class ResponseLog:
    """Every HTTP response a client saw: (method, url, status, x-request-id or None)."""

    entries: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    def hook(self, response: Any) -> None:
        self.entries.append((response.request.method, str(response.request.url), response.status_code,
                             response.headers.get("x-request-id")))


def openai_client(base_url: str, log: ResponseLog | None = None, timeout: float = 30,
                  api_key: str = "test") -> OpenAI:
    http_client = DefaultHttpxClient(event_hooks={"response": [log.hook]}) if log is not None else None
    return OpenAI(base_url=base_url, api_key=api_key, _strict_response_validation=True, max_retries=0,
                  timeout=timeout, http_client=http_client)


class FreightServer:
    def __init__(self, data_dir: Path, config: Path, *, port: int | None = None, log_path: Path | None = None,
                 database_url: str | None = None):
        self.data_dir = data_dir
        self.config = config
        #: PostgreSQL (``freight serve --database-url``); None: SQLite in the data dir.
        self.database_url = database_url
        self.port = port or free_port()
        self.log_path = log_path or data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "freight.db"

    def client(self, log: ResponseLog | None = None, api_key: str = "test") -> OpenAI:
        return openai_client(self.base_url, log, api_key=api_key)

    def create_key(self, project: str) -> str:
        """``freight keys create`` on this server's data dir; the key (the last line it prints)."""
        done = subprocess.run([*freight_command(), "keys", "create", "--project", project, "--data-dir",
                               str(self.data_dir), "--config", str(self.config)], capture_output=True, text=True,
                              cwd=self.config.parent, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 0, done
        return done.stdout.strip().splitlines()[-1]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def spawn(self) -> None:
        """Start the process without waiting for it to answer."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [*freight_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--config", str(self.config)]
        if self.database_url is not None:
            cmd += ["--database-url", self.database_url]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.config.parent, env=subprocess_env(), start_new_session=True)

    def start(self, timeout_s: float = 60) -> FreightServer:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"freight serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"freight serve did not become healthy in {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> FreightServer:
        self.kill()
        return self.start()


# ---- batch files ---------------------------------------------------------------------------

def request_line(custom_id: str, *, model: str = SCRIPTED, url: str = "/v1/chat/completions",
                 body: dict[str, Any] | None = None, **script: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"hello {custom_id}"}]}
    if script:
        b["script"] = script
    if body:
        b.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": b}


def jsonl_bytes(lines: Iterable[dict[str, Any] | str]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Parse result JSONL, checking the hygiene rules: ``\\n`` endings, no blank lines, no CR."""
    if not data:
        return []
    assert b"\r" not in data, "result files must not contain CR"
    assert data.endswith(b"\n"), "result files end with a newline"
    lines = data[:-1].split(b"\n")
    assert all(line.strip() for line in lines), "result files have no blank lines"
    return [json.loads(line) for line in lines]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


# ---- the data dir's SQLite store, read-only from the outside -------------------------------

def done_requests(db: Path, batch_id: str | None = None) -> dict[str, tuple[int | None, str | None, int]]:
    """custom_id -> (status_code, request_id, attempts) of every finished request (state 2)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        sql = "SELECT custom_id, status_code, request_id, attempts FROM requests WHERE state=2"
        args: Sequence[Any] = ()
        if batch_id is not None:
            sql += " AND batch_id=?"
            args = (batch_id,)
        return {row[0]: (row[1], row[2], row[3]) for row in c.execute(sql, args)}


def request_states(db: Path) -> dict[int, int]:
    """state -> number of requests (0 pending, 1 running, 2 done); {} before the database has its tables.

    Any other error is retried, then raised: read as {} it made ``get(1, 0) == 0`` ("nothing running") true
    for a moment in a loaded fresh-clone run, and a pause test read its counts before the engine had stored
    them."""
    for attempt in range(50):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
                return {row[0]: row[1] for row in c.execute("SELECT state, count(*) FROM requests GROUP BY state")}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or not db.exists():
                return {}
            if attempt == 49:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
