"""Chaos: SIGKILL freight at chosen and random moments of its batches' lives, restart it, repeat, and
check that nothing was lost or doubled.

    python -m tests.chaos --kills 100                  # from the repository root; prints a table
    python -m tests.chaos --kills 30 --target run      # `freight run` instead of `freight serve`
    FREIGHT_CHAOS_SEED=1234 python -m tests.chaos      # replay a run's schedule (the seed is printed)

Each kill aims at one moment of the lifecycle: an upload streaming in, a batch validating, requests
executing, a batch finalizing, a batch cancelling, the process starting up, or a random moment.
After each kill freight restarts with a different engine shape (the scripted model's
``chunk_size`` and ``max_concurrency``). The workload mixes successes, permanent 400s, transient
503s and connection failures that succeed on a retry, requests that fail every attempt, cancels,
and now and then a batch whose completion window runs out. The client side behaves like an SDK
with an ``Idempotency-Key``: after a kill it retries what got no answer.

What is checked, at the end, when every batch is terminal:

- guarantee 1: for every batch, the output and error files hold exactly one line per input
  ``custom_id`` (``lost``: missing, ``doubled``: more than one, or a line that is no input's) and
  ``request_counts`` agree with the files (``counts``);
- a result stored before any kill is the one in the final file (``rerun``: a finished request ran
  again and its stored result was replaced);
- guarantee 2: every upload and every batch that was answered 200 still exists (``missing``), and
  retrying a create whose answer was lost made no second file or batch (``duplicates``).

The seed fixes the schedule (which moment each kill aims at, the delays, the workload); where a kill
lands exactly still depends on timing, so the table's phase counts can differ between two runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import (
    SCRIPTED,
    TERMINAL,
    FreightServer,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    subprocess_env,
)

PHASES = ("upload", "validating", "in_progress", "finalizing", "cancelling", "startup", "random")
CHAT = "/v1/chat/completions"


# ---- the tally ---------------------------------------------------------------------------------

@dataclass
class Tally:
    seed: int
    target: str = "serve"
    kills: int = 0
    batches: int = 0
    lines: int = 0
    lost: int = 0
    doubled: int = 0
    counts: int = 0
    rerun: int = 0
    missing: int = 0
    duplicates: int = 0
    #: Where the kills landed: the status of each batch alive at that moment, "upload" for an upload in
    #: flight, "startup" for a process not yet answering, "idle" when nothing was going on.
    landed: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: The tallies this one adds up (one per target), each a row of the table.
    parts: list[Tally] = field(default_factory=list)
    #: Print each problem as it is found.
    echo: bool = True

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.counts or self.rerun or self.missing or self.duplicates
                    or self.problems)

    def add(self, other: Tally) -> None:
        for name in ("kills", "batches", "lines", "lost", "doubled", "counts", "rerun", "missing", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.landed.update(other.landed)
        self.problems.extend(other.problems)
        self.parts.append(other)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        if self.echo:
            print(f"  PROBLEM: {text}", flush=True)

    def table(self) -> str:
        head = ("target", "kills", "batches", "lines checked", "lost", "doubled", "counts off", "rerun",
                "missing", "duplicates")
        rows = [(t.target, t.kills, t.batches, t.lines, t.lost, t.doubled, t.counts, t.rerun, t.missing,
                 t.duplicates) for t in ([*self.parts, self] if len(self.parts) > 1 else [self])]
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(str(h).rjust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
        landed = ", ".join(f"{k} {v}" for k, v in sorted(self.landed.items(), key=lambda kv: -kv[1]))
        lines.append(f"kills landed during: {landed or '-'}")
        lines.append(f"seed {self.seed} (FREIGHT_CHAOS_SEED={self.seed} replays the schedule); "
                     f"{self.elapsed_s:.0f} s; {'OK' if self.ok else 'FAILED'}")
        lines.extend(f"problem: {p}" for p in self.problems[:20])
        return "\n".join(lines)


# ---- workload ----------------------------------------------------------------------------------

def make_lines(rng: random.Random, prefix: str, n: int, *, pad: int = 0, sleep_s: float | None = None,
               model: str = SCRIPTED) -> list[dict[str, Any]]:
    """n requests: mostly successes, some permanent 400s, transient failures, and hopeless ones."""
    lines = []
    for i in range(n):
        cid = f"{prefix}-{i:05d}"
        script: dict[str, Any] = {}
        r = rng.random()
        if r < 0.04:
            script = {"status": 400}
        elif r < 0.08:
            script = {"status": 503, "fail_times": rng.randint(1, 2), "key": cid}
        elif r < 0.10:
            script = {"status": 0, "fail_times": 1, "key": cid}  # no response at all, once
        elif r < 0.11:
            script = {"status": 503, "key": cid}  # fails every attempt: an error line in the end
        sleep = rng.choice((0, 0, 0.002, 0.01, 0.03)) if sleep_s is None else sleep_s
        if sleep:
            script["sleep_s"] = sleep
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": cid}]}
        if pad:
            body["pad"] = "x" * pad  # echoed back: makes finalizing write a lot
        if script:
            body["script"] = script
        lines.append({"custom_id": cid, "method": "POST", "url": CHAT, "body": body})
    return lines


def engine_config(rng: random.Random, synchronous: str) -> str:
    chunk = rng.choice((2, 4, 8, 16, 32))
    concurrency = rng.choice((1, 2, 4, 8))
    return f"""\
[server]
sqlite_synchronous = "{synchronous}"

[models."{SCRIPTED}"]
backend = "scripted"
chunk_size = {chunk}
max_concurrency = {concurrency}

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
retry_max_delay_s = 0.5
max_attempts = 4

[limits]
completion_window_min = "1s"
max_active_batches_per_project = 0
"""


def check_lines(tally: Tally, what: str, custom_ids: list[str], out: list[dict[str, Any]],
                err: list[dict[str, Any]], counts: tuple[int, int, int] | None) -> None:
    """Guarantee 1 for one terminal batch."""
    seen = Counter(line["custom_id"] for line in out + err)
    expected = set(custom_ids)
    lost = [c for c in custom_ids if c not in seen]
    doubled = [c for c, n in seen.items() if n > 1 or c not in expected]
    tally.batches += 1
    tally.lines += len(out) + len(err)
    tally.lost += len(lost)
    tally.doubled += len(doubled)
    if lost or doubled:
        tally.problem(f"{what}: lost {lost[:3]}, doubled {doubled[:3]}")
    if counts is not None and counts != (len(custom_ids), len(out), len(err)):
        tally.counts += 1
        tally.problem(f"{what}: request_counts (total, completed, failed) {counts} but the files hold "
                      f"{len(custom_ids)} requests, {len(out)} output and {len(err)} error lines")


def check_not_rerun(tally: Tally, what: str, before: dict[str, tuple[Any, Any]],
                    final: list[dict[str, Any]]) -> None:
    """Results stored before a kill are the ones in the final files (nothing finished ran again)."""
    got = {line["custom_id"]: (line["response"]["status_code"], line["response"]["request_id"])
           if line["response"] else (None, None) for line in final}
    rerun = [cid for cid, result in before.items() if cid in got and got[cid] != result]
    if rerun:
        tally.rerun += len(rerun)
        tally.problem(f"{what}: {len(rerun)} requests finished before a kill have another result now: {rerun[:3]}")


def read_db(db: Path) -> tuple[dict[str, str], dict[tuple[str, str], tuple[Any, Any]]]:
    """(batch id -> status, (batch id, custom_id) -> (status_code, request_id) of finished requests)."""
    if not db.exists():
        return {}, {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
            statuses = dict(c.execute("SELECT id, status FROM batches").fetchall())
            done = {(b, cid): (s, r) for b, cid, s, r in c.execute(
                "SELECT batch_id, custom_id, status_code, request_id FROM requests WHERE state=2")}
        return statuses, done
    except sqlite3.OperationalError:
        return {}, {}


def statuses_now(db: Path) -> dict[str, str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return dict(c.execute("SELECT id, status FROM batches").fetchall())
    except sqlite3.OperationalError:
        return {}


# ---- freight serve -----------------------------------------------------------------------------

@dataclass
class BatchRecord:
    key: str
    custom_ids: list[str]
    file_key: str
    batch_id: str | None = None
    cancel: bool = False
    #: The input's last line is invalid: the batch must end failed, naming that line.
    bad_line: int | None = None


class ServeChaos:
    def __init__(self, workdir: Path, rng: random.Random, tally: Tally, *, big: int, synchronous: str):
        self.rng = rng
        self.tally = tally
        self.big = big
        self.synchronous = synchronous
        self.config = workdir / "freight.toml"
        self.server = FreightServer(workdir / "data", self.config, log_path=workdir / "server.log")
        self.http = httpx.Client(base_url=self.server.base_url, timeout=60,
                                 headers={"authorization": "Bearer chaos"})
        self.files: dict[str, str] = {}  # upload idempotency key -> file id (answered 200)
        self.inputs: dict[str, tuple[bytes, list[str]]] = {}
        self.records: dict[str, BatchRecord] = {}
        self.stored_before_kill: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.seq = 0

    # -- process control
    def start(self) -> None:
        self.config.write_text(engine_config(self.rng, self.synchronous))
        self.server.start()

    def kill(self, what: str | None = None) -> None:
        alive = self.server.proc is not None and self.server.proc.poll() is None
        if not alive:
            code = self.server.proc.returncode if self.server.proc else None
            self.tally.problem(f"freight serve was not running at a kill (exit {code}):\n{self.server.log_tail()}")
        self.server.kill()
        self.tally.kills += 1
        statuses, done = read_db(self.server.db_path)
        landed = {s for s in statuses.values() if s not in TERMINAL}
        if what:
            landed.add(what)
        self.tally.landed.update(landed or {"idle"})
        self.stored_before_kill.update(done)

    def ensure_up(self) -> None:
        if self.server.proc is None or self.server.proc.poll() is not None:
            code = self.server.proc.returncode if self.server.proc else None
            if code is not None and code != -signal.SIGKILL:
                self.tally.problem(f"freight serve died by itself (exit {code}):\n{self.server.log_tail()}")
            self.start()

    # -- a client that retries like an SDK with an Idempotency-Key
    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(20):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                self.ensure_up()
                continue
            if response.status_code >= 500:
                self.tally.problem(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
                continue
            return response
        raise RuntimeError(f"{method} {path}: no answer after 20 tries")

    def upload(self, key: str, data: bytes) -> str:
        response = self.call("POST", "/files", files={"file": (f"{key}.jsonl", data)}, data={"purpose": "batch"},
                             headers={"Idempotency-Key": key})
        assert response.status_code == 200, response.text
        file_id: str = response.json()["id"]
        if key in self.files and self.files[key] != file_id:
            self.tally.duplicates += 1
            self.tally.problem(f"upload {key}: a retry made a second file ({self.files[key]}, then {file_id})")
        self.files[key] = file_id
        return file_id

    def create(self, record: BatchRecord, window: str = "24h") -> str:
        body = {"input_file_id": self.files[record.file_key], "endpoint": CHAT, "completion_window": window}
        response = self.call("POST", "/batches", json=body, headers={"Idempotency-Key": record.key})
        assert response.status_code == 200, response.text
        batch_id: str = response.json()["id"]
        if record.batch_id is not None and record.batch_id != batch_id:
            self.tally.duplicates += 1
            self.tally.problem(f"batch {record.key}: a retry made a second batch ({record.batch_id}, {batch_id})")
        record.batch_id = batch_id
        self.records[record.key] = record
        return batch_id

    def submit(self, n: int, *, pad: int = 0, sleep_s: float | None = None, window: str = "24h",
               bad_last_line: bool = False) -> BatchRecord:
        self.seq += 1
        key = f"c{self.seq:04d}"
        lines = make_lines(self.rng, key, n, pad=pad, sleep_s=sleep_s)
        if bad_last_line:
            lines[-1]["body"]["model"] = "no-such-model"
        data = jsonl_bytes(lines)
        self.inputs[key] = (data, [line["custom_id"] for line in lines])
        self.upload(key, data)
        record = BatchRecord(f"b-{key}", self.inputs[key][1], key, bad_line=n if bad_last_line else None)
        self.create(record, window)
        return record

    def active(self) -> list[str]:
        statuses = statuses_now(self.server.db_path)
        return [r.batch_id for r in self.records.values() if r.batch_id and statuses.get(r.batch_id) not in TERMINAL]

    def wait_db(self, predicate: Any, timeout_s: float, every_s: float = 0.002) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(statuses_now(self.server.db_path)):
                return True
            time.sleep(every_s)
        return False

    # -- the moments to kill at
    def kill_during_upload(self) -> None:
        self.seq += 1
        key = f"c{self.seq:04d}"
        lines = make_lines(self.rng, key, self.big, pad=1000)
        data = jsonl_bytes(lines)
        self.inputs[key] = (data, [line["custom_id"] for line in lines])
        result: dict[str, Any] = {}
        thread = threading.Thread(target=self._slow_upload, args=(key, data, result), daemon=True)
        thread.start()
        time.sleep(self.rng.uniform(0, 0.6))  # the upload takes about 0.5 s
        self.kill("upload" if thread.is_alive() else None)
        thread.join(30)
        if result.get("status") == 200:
            self.files[key] = result["id"]  # answered before the kill: it must survive
        self.start()
        self.upload(key, data)  # the client retries with the same key
        self.create(BatchRecord(f"b-{key}", self.inputs[key][1], key))

    def _slow_upload(self, key: str, data: bytes, result: dict[str, Any]) -> None:
        boundary = "chaosboundary7f3a"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{key}.jsonl\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        chunk = 1 << 16
        pause = 0.5 / max(1, len(data) // chunk)

        def body() -> Iterator[bytes]:
            yield head
            for i in range(0, len(data), chunk):
                yield data[i:i + chunk]
                time.sleep(pause)
            yield tail

        try:
            response = self.http.post("/files", content=body(), headers={
                "content-type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": key})
            result["status"] = response.status_code
            if response.status_code == 200:
                result["id"] = response.json()["id"]
        except httpx.TransportError as exc:
            result["error"] = exc

    def kill_during_validation(self) -> None:
        # Big enough to be persisted in several chunks; half of the time its last line is bad, so the
        # batch must end failed (and costs nothing to run).
        record = self.submit(max(self.big, 2500), sleep_s=0, bad_last_line=self.rng.random() < 0.5)
        assert record.batch_id
        self.wait_rows(record.batch_id, 5)  # half persisted
        time.sleep(self.rng.uniform(0, 0.05))
        self.kill()
        self.start()

    def wait_rows(self, batch_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(
                    f"file:{self.server.db_path}?mode=ro", uri=True, timeout=5)) as c:
                row = c.execute("SELECT status, (SELECT count(*) FROM requests WHERE batch_id=?) FROM batches "
                                "WHERE id=?", (batch_id, batch_id)).fetchone()
                if row is None or row[0] != "validating" or row[1] > 0:
                    return row is not None and row[0] == "validating"
            time.sleep(0.001)
        return False

    def kill_during_execution(self) -> None:
        if not self.active():
            self.submit(self.rng.randint(100, 400))
        self.wait_db(lambda s: any(v == "in_progress" for v in s.values()), 5)
        time.sleep(self.rng.uniform(0, 0.3))
        self.kill()
        self.start()

    def kill_during_finalizing(self) -> None:
        if not self.active():
            self.submit(self.rng.randint(self.big // 2, self.big), pad=1500, sleep_s=0)
        self.wait_db(lambda s: "finalizing" in s.values(), 10, every_s=0.001)
        self.kill()
        self.start()

    def kill_during_cancel(self) -> None:
        candidates = [b for b in self.active() if not self._record(b).cancel]
        if not candidates:
            record = self.submit(self.rng.randint(100, 400))
            assert record.batch_id
            candidates = [record.batch_id]
        batch_id = self.rng.choice(candidates)
        self._record(batch_id).cancel = True
        response = self.call("POST", f"/batches/{batch_id}/cancel")
        if response.status_code not in (200, 409):  # 409: it finished first
            self.tally.problem(f"cancel {batch_id}: HTTP {response.status_code} {response.text[:200]}")
        time.sleep(self.rng.uniform(0, 0.02))  # in-flight requests are still draining
        self.kill()
        self.start()

    def kill_at_startup(self) -> None:
        self.kill()
        self.config.write_text(engine_config(self.rng, self.synchronous))
        self.server.spawn()
        time.sleep(self.rng.uniform(0.05, 1.2))
        healthy = False
        with contextlib.suppress(httpx.HTTPError):
            healthy = httpx.get(self.server.url + "/health", timeout=1).status_code == 200
        self.kill(None if healthy else "startup")
        self.start()

    def kill_at_random(self) -> None:
        time.sleep(self.rng.uniform(0.05, 1.5))
        self.kill()
        self.start()

    def _record(self, batch_id: str) -> BatchRecord:
        return next(r for r in self.records.values() if r.batch_id == batch_id)

    # -- the run
    def run(self, kills: int, deadline_s: float) -> None:
        self.start()
        # something in flight from the start: a medium batch, and now and then one that will expire
        self.submit(self.rng.randint(100, 300))
        actions = {"upload": self.kill_during_upload, "validating": self.kill_during_validation,
                   "in_progress": self.kill_during_execution, "finalizing": self.kill_during_finalizing,
                   "cancelling": self.kill_during_cancel, "startup": self.kill_at_startup,
                   "random": self.kill_at_random}
        aims: list[str] = []
        while self.tally.kills < kills:
            if len(self.active()) < 2:
                expiring = self.rng.random() < 0.15
                self.submit(self.rng.randint(50, 300), sleep_s=0.05 if expiring else None,
                            window=f"{self.rng.randint(2, 6)}s" if expiring else "24h")
            if not aims:  # every moment once per round, in a shuffled order
                aims = self.rng.sample(PHASES, len(PHASES))
            actions[aims.pop()]()
        self.finish(deadline_s)

    def finish(self, deadline_s: float) -> None:
        self.ensure_up()
        deadline = time.monotonic() + deadline_s
        pending = {r.batch_id for r in self.records.values() if r.batch_id}
        batches: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < deadline:
            for batch_id in list(pending):
                response = self.call("GET", f"/batches/{batch_id}")
                if response.status_code != 200:
                    self.tally.missing += 1
                    self.tally.problem(f"batch {batch_id} was accepted but is gone: {response.text[:200]}")
                    pending.discard(batch_id)
                elif response.json()["status"] in TERMINAL:
                    batches[batch_id] = response.json()
                    pending.discard(batch_id)
            time.sleep(0.1)
        for batch_id in pending:
            self.tally.problem(f"batch {batch_id} did not finish in {deadline_s:.0f} s after the last kill")
        stored: dict[str, dict[str, tuple[Any, Any]]] = {}
        for (batch_id, cid), result in self.stored_before_kill.items():
            stored.setdefault(batch_id, {})[cid] = result
        for record in self.records.values():
            batch = batches.get(record.batch_id or "")
            if batch is None:
                continue
            what = f"batch {batch['id']} ({batch['status']})"
            if record.bad_line is not None:
                # failed validation (or cancelled while validating): the errors, and no request at all
                errors = [(e["line"], e["code"]) for e in (batch["errors"] or {}).get("data", [])]
                expected = [(record.bad_line, "model_not_found")]
                statuses = ("failed", "cancelled") if record.cancel else ("failed",)
                self.tally.batches += 1
                if batch["status"] not in statuses or errors != expected or batch["output_file_id"] \
                        or batch["error_file_id"] or batch["request_counts"]["total"]:
                    self.tally.counts += 1
                    self.tally.problem(f"{what}: expected failed with {expected} and no files, got {batch}")
                continue
            if batch["status"] == "failed":
                self.tally.problem(f"{what} failed validation: {batch['errors']}")
                continue
            out = self._content(batch["output_file_id"])
            err = self._content(batch["error_file_id"])
            counts = batch["request_counts"]
            check_lines(self.tally, what, record.custom_ids, out, err,
                        (counts["total"], counts["completed"], counts["failed"]))
            check_not_rerun(self.tally, what, stored.get(batch["id"], {}), out + err)
        for key, file_id in self.files.items():
            if self.call("GET", f"/files/{file_id}").status_code != 200:
                self.tally.missing += 1
                self.tally.problem(f"upload {key} ({file_id}) was answered 200 but is gone")
        listed = self._list("/batches", 100)
        uploads = [f for f in self._list("/files", 10_000) if f["purpose"] == "batch"]
        if len(listed) != len(self.records) or len(uploads) != len(self.files):
            self.tally.duplicates += abs(len(listed) - len(self.records)) + abs(len(uploads) - len(self.files))
            self.tally.problem(f"the server has {len(listed)} batches and {len(uploads)} uploads; the client made "
                               f"{len(self.records)} and {len(self.files)}")
        self.server.stop()

    def _content(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        response = self.call("GET", f"/files/{file_id}/content")
        assert response.status_code == 200, response.text
        return parse_jsonl(response.content)

    def _list(self, path: str, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            page = self.call("GET", path, params=params).json()
            items.extend(page["data"])
            if not page["has_more"] or not page["data"]:
                return items
            params["after"] = page["data"][-1]["id"]


# ---- freight run -------------------------------------------------------------------------------

def run_chaos(workdir: Path, rng: random.Random, tally: Tally, kills: int, *, n: int, synchronous: str,
              deadline_s: float) -> None:
    """``freight run`` killed again and again until it gets to finish, input after input."""
    config = workdir / "freight.toml"
    data_dir = workdir / "data"
    db = data_dir / "freight.db"
    index = 0
    while tally.kills < kills or index == 0:
        index += 1
        lines = make_lines(rng, f"r{index:03d}", n, pad=rng.choice((0, 500)))
        custom_ids = [line["custom_id"] for line in lines]
        input_path = workdir / f"in{index}.jsonl"
        input_path.write_bytes(jsonl_bytes(lines))
        out = workdir / f"out{index}.jsonl"
        errors = workdir / f"out{index}.errors.jsonl"
        cmd = [*freight_command(), "run", str(input_path), "-o", str(out), "--data-dir", str(data_dir),
               "--config", str(config)]
        stored: dict[str, tuple[Any, Any]] = {}
        started = time.monotonic()
        for _ in range(kills + 50):
            config.write_text(engine_config(rng, synchronous))
            with open(workdir / "run.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=workdir, env=subprocess_env(), start_new_session=True)
            if tally.kills < kills:
                delay = rng.uniform(0.5, 3.0)  # starting takes about 1 s
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(delay)
            if proc.poll() is None and tally.kills < kills:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                tally.kills += 1
                statuses, done = read_db(db)
                ours = {s for b, s in statuses.items() if s not in TERMINAL}
                tally.landed.update(ours or {"preparing"})
                stored.update({cid: result for (_, cid), result in done.items() if cid.startswith(f"r{index:03d}-")})
                continue
            try:
                proc.wait(max(1.0, deadline_s - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                tally.problem(f"freight run of input {index} did not finish in {deadline_s:.0f} s")
                return
            if proc.returncode not in (0, 3):
                tail = (workdir / "run.log").read_text(errors="replace")[-2000:]
                tally.problem(f"freight run of input {index} exited {proc.returncode}:\n{tail}")
                return
            break
        out_lines = parse_jsonl(out.read_bytes()) if out.exists() else []
        err_lines = parse_jsonl(errors.read_bytes()) if errors.exists() else []
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            row = c.execute("SELECT b.total, b.completed, b.failed FROM batches b JOIN requests r ON r.batch_id=b.id "
                            "WHERE r.custom_id=? LIMIT 1", (custom_ids[0],)).fetchone()
        check_lines(tally, f"freight run of input {index}", custom_ids, out_lines, err_lines,
                    tuple(row) if row else None)
        check_not_rerun(tally, f"freight run of input {index}", stored, out_lines + err_lines)


# ---- entry points ------------------------------------------------------------------------------

def seed_from_env(seed: int | None = None) -> int:
    if seed is not None:
        return seed
    env = os.environ.get("FREIGHT_CHAOS_SEED")
    return int(env) if env else random.SystemRandom().randrange(1, 10**9)


def chaos(kills: int, *, target: str = "serve", seed: int | None = None, workdir: Path | None = None,
          big: int = 1500, run_size: int = 300, synchronous: str = "FULL", deadline_s: float = 120) -> Tally:
    """Run the chaos schedule; returns the tally (``tally.ok`` says whether every check held)."""
    seed = seed_from_env(seed)
    print(f"chaos: target={target} kills={kills} seed={seed} (replay: FREIGHT_CHAOS_SEED={seed})", flush=True)
    rng = random.Random(seed)
    tally = Tally(seed=seed, target="all" if target == "both" else target)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="freight-chaos-")))
        if target in ("serve", "both"):
            part = Tally(seed=seed, target="serve")
            serve_kills = kills if target == "serve" else kills - kills // 3
            (root / "serve").mkdir(parents=True, exist_ok=True)
            ServeChaos(root / "serve", rng, part, big=big, synchronous=synchronous).run(serve_kills, deadline_s)
            tally.add(part)
        if target in ("run", "both"):
            part = Tally(seed=seed, target="run")
            run_kills = kills if target == "run" else kills // 3
            (root / "run").mkdir(parents=True, exist_ok=True)
            run_chaos(root / "run", rng, part, run_kills, n=run_size, synchronous=synchronous, deadline_s=deadline_s)
            tally.add(part)
    tally.elapsed_s = time.monotonic() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="how many SIGKILLs (default 100)")
    parser.add_argument("--target", choices=("serve", "run", "both"), default="both",
                        help="freight serve, freight run, or both (two thirds serve; default)")
    parser.add_argument("--seed", type=int, default=None, help="default: $FREIGHT_CHAOS_SEED, else random")
    parser.add_argument("--big", type=int, default=2000, help="requests in the big batches (upload, validation)")
    parser.add_argument("--synchronous", default="FULL", help="server.sqlite_synchronous (default FULL)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data dirs and logs here")
    args = parser.parse_args(argv)
    tally = chaos(args.kills, target=args.target, seed=args.seed, workdir=args.workdir, big=args.big,
                  synchronous=args.synchronous, deadline_s=120)
    print(tally.table())
    print(json.dumps({k: getattr(tally, k) for k in ("kills", "batches", "lines", "lost", "doubled", "rerun")}))
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())
