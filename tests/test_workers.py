"""Several processes on one store: ``freight serve --no-worker`` (the API alone) beside ``freight
worker`` processes, on one SQLite data dir or on PostgreSQL (each process with its own data dir,
files in one shared ``--blobs`` directory). Batches finish with every request run once; a worker
killed with SIGKILL mid-batch loses nothing (the others take its requests when their leases
expire); a worker that joins mid-batch takes work."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from servers import (
    FreightServer,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    postgres_database,
    request_line,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.slow

CONFIG = """\
[models."freight-scripted"]
backend = "scripted"
chunk_size = 4
max_concurrency = 2

[engine]
poll_interval_s = 0.05
lease_s = 5
step_lease_s = 3
retry_base_delay_s = 0.05
"""


class Fleet:
    """Where the processes keep their state: one SQLite data dir, or PostgreSQL + shared blobs."""

    def __init__(self, root: Path, database_url: str | None):
        self.root = root
        self.database_url = database_url

    def args(self, name: str) -> list[str]:
        if self.database_url is None:
            return ["--data-dir", str(self.root / "data")]
        return ["--data-dir", str(self.root / f"data-{name}"), "--database-url", self.database_url,
                "--blobs", str(self.root / "blobs")]

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.database_url is None:
            try:
                with contextlib.closing(sqlite3.connect(f"file:{self.root / 'data' / 'freight.db'}?mode=ro",
                                                        uri=True, timeout=30)) as c:
                    return list(c.execute(sql, args))
            except sqlite3.OperationalError:
                return []
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as c:
            return [tuple(r) for r in c.execute(sql.replace("?", "%s"), args).fetchall()]

    def attempts(self, batch_id: str) -> dict[str, int]:
        """custom_id -> attempts of every finished request of a batch."""
        rows = self.rows("SELECT custom_id, attempts FROM requests WHERE state=2 AND batch_id=?", batch_id)
        return {str(r[0]): int(r[1]) for r in rows}


class ApiOnly(FreightServer):
    def __init__(self, fleet: Fleet, **kw: Any):
        super().__init__(fleet.root / "data-api", fleet.root / "freight.toml", **kw)
        self.fleet = fleet

    def spawn(self) -> None:
        cmd = [*freight_command(), "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port),
               *self.fleet.args("api"), "--config", str(self.config)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.config.parent, env=subprocess_env(), start_new_session=True)


class Worker:
    def __init__(self, fleet: Fleet, name: str):
        root = fleet.root
        self.log_path = root / f"worker-{name}.log"
        self.database_url = fleet.database_url
        cmd = [*freight_command(), "worker", *fleet.args(name), "--config", str(root / "freight.toml")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=root, env=subprocess_env(), start_new_session=True)
        self.owner: str = wait_for(self._owner, 60, f"worker {name} to start")

    def _owner(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        text = self.log_path.read_text(errors="replace")
        found = re.search(r"worker (\S+) \((data|database): (\S+?);", text)
        if found is None:
            return None
        # the start-up line says where the batches are: the shared database (its password masked), else the data dir
        shared = self.database_url is not None
        assert found.group(2) == ("database" if shared else "data"), text
        assert ("; files: " in text) == shared, text  # (--blobs is given with the database only)
        return found.group(1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Owners:
    """Samples which processes hold running requests (the requests' lease_owner) while a test runs."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def running(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self.fleet.rows(
            "SELECT lease_owner, count(*) FROM requests WHERE state=1 GROUP BY lease_owner")}

    def _run(self) -> None:
        while not self._stop.is_set():
            for owner, n in self.running().items():
                self.seen[owner] = self.seen.get(owner, 0) + n
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "freight.toml").write_text(CONFIG)
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgres":
            url = stack.enter_context(postgres_database("freight_workers"))
            done = subprocess.run([*freight_command(), "migrate", "--database-url", url], capture_output=True,
                                  text=True, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)
            assert done.returncode == 0, done
        where = Fleet(tmp_path, url)
        api = ApiOnly(where, log_path=tmp_path / "api.log").start()
        workers: list[Worker] = []
        owners = Owners(where)
        try:
            yield {"fleet": where, "api": api, "client": api.client(), "workers": workers, "owners": owners}
        finally:
            owners.close()
            for w in workers:
                w.stop()
            api.stop()


def _batch(client: OpenAI, n: int, prefix: str, sleep_s: float) -> str:
    lines = [request_line(f"{prefix}-{i}", sleep_s=sleep_s) for i in range(n)]
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def _finished(client: OpenAI, batch_id: str, timeout_s: float = 90) -> Any:
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in ("completed", "failed") and b,
                    timeout_s, f"batch {batch_id} to finish", every_s=0.1)


def _check_output(client: OpenAI, batch: Any, prefix: str, n: int) -> None:
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
    out = parse_jsonl(client.files.content(batch.output_file_id).content)
    assert [line["custom_id"] for line in out] == [f"{prefix}-{i}" for i in range(n)], "one line per request"


def _done(fleet: Fleet, batch_id: str) -> int:
    return len(fleet.attempts(batch_id))


def test_two_workers_beside_an_api_only_server_run_every_request_once(fleet: dict[str, Any]) -> None:
    client, where, workers = fleet["client"], fleet["fleet"], fleet["workers"]
    first = _batch(client, 80, "a", 0.02)
    time.sleep(1.0)
    assert client.batches.retrieve(first).status == "validating", "serve --no-worker runs no engine"
    workers += [Worker(fleet["fleet"], "1"), Worker(fleet["fleet"], "2")]
    ids = [first, _batch(client, 80, "b", 0.1), _batch(client, 80, "c", 0.1)]
    for batch_id, prefix in zip(ids, "abc", strict=True):
        _check_output(client, _finished(client, batch_id), prefix, 80)
        assert set(where.attempts(batch_id).values()) == {1}, "no request ran twice"
    seen = fleet["owners"].seen
    assert {w.owner for w in workers} <= set(seen), f"both workers ran requests: {seen}"


def test_a_worker_killed_mid_batch_loses_nothing(fleet: dict[str, Any]) -> None:
    client, where, workers, owners = fleet["client"], fleet["fleet"], fleet["workers"], fleet["owners"]
    workers += [Worker(fleet["fleet"], "1"), Worker(fleet["fleet"], "2")]
    victim, survivor = workers
    batch_id = _batch(client, 240, "k", 0.15)
    wait_for(lambda: _done(where, batch_id) >= 40 and owners.running().get(victim.owner), 60,
             "the victim to hold running requests mid-batch")
    held = owners.running().get(victim.owner, 0)
    victim.kill()
    done = _finished(client, batch_id)
    _check_output(client, done, "k", 240)
    attempts = list(where.attempts(batch_id).values())
    assert max(attempts) <= 2
    rerun = sum(1 for a in attempts if a == 2)
    assert rerun <= 8, f"only the victim's in-flight requests ran again (it held {held}, 8 at most): {rerun}"
    assert survivor.proc.poll() is None


def test_a_worker_that_joins_mid_batch_takes_work(fleet: dict[str, Any]) -> None:
    client, where, workers, owners = fleet["client"], fleet["fleet"], fleet["workers"], fleet["owners"]
    workers.append(Worker(fleet["fleet"], "1"))
    # Long enough for a second process to start on a busy machine (one worker alone needs ~6 s for it).
    batch_id = _batch(client, 320, "j", 0.15)
    wait_for(lambda: _done(where, batch_id) >= 20, 60, "the batch to be under way")
    late = Worker(fleet["fleet"], "late")
    workers.append(late)
    wait_for(lambda: late.owner in owners.seen, 30, "the late worker to claim requests")
    done = _finished(client, batch_id)
    _check_output(client, done, "j", 320)
    assert set(where.attempts(batch_id).values()) == {1}
