"""The request queue's SQL alone on SQLite, with the sqlite3 module and nothing of freight: 100,000
requests of ``bench_engine.py``'s shape inserted in chunks of 5,000, claimed and completed 256 at a
time, read back in order. Two layouts: freight's (one row per request, the result written into it) and
a split one (a narrow queue table, the bodies, an append-only results table). Microseconds per request.

    python bench/sqlite_layouts.py [--checkpoint-off-writer]
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable

N, C = 100_000, 256
BODY = b'{"model":"freight-scripted","messages":[{"role":"user","content":"hi 12345"}],"max_tokens":4}'
RESPONSE = b"x" * 420
B = "batch_0123456789abcdef01234567"
ONE = """CREATE TABLE requests (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, line INTEGER NOT NULL,
  custom_id TEXT NOT NULL, body BLOB NOT NULL, state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
  not_before REAL NOT NULL DEFAULT 0, attempt_id TEXT, lease_owner TEXT, lease_until REAL, last_error TEXT,
  status_code INTEGER, response_body BLOB, request_id TEXT, error_code TEXT, error_message TEXT,
  input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;
CREATE INDEX open_q ON requests(batch_id, state, idx) WHERE state < 2;"""
SPLIT = """CREATE TABLE requests (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, line INTEGER NOT NULL,
  custom_id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;
CREATE TABLE q (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0, attempt_id TEXT, lease_owner TEXT,
  lease_until REAL, last_error TEXT, PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;
CREATE INDEX open_q ON q(batch_id, state, idx) WHERE state < 2;
CREATE TABLE results (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, status_code INTEGER, response_body BLOB,
  request_id TEXT, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;"""


def connect(path: str, off_writer: bool) -> sqlite3.Connection:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    if off_writer:  # as freight's writer: the checkpoint runs elsewhere (here: not during the timing)
        c.execute("PRAGMA wal_autocheckpoint=100000")
    return c


def timed(fn: Callable[[], None], into: list[float]) -> None:
    t = time.perf_counter()
    fn()
    into.append(time.perf_counter() - t)


def layout(split: bool, off_writer: bool) -> dict[str, float]:
    c = connect(tempfile.mkdtemp(prefix="freight-layouts-") + "/db", off_writer)
    c.executescript(SPLIT if split else ONE)
    queue = "q" if split else "requests"
    ingest: list[float] = []
    claim: list[float] = []
    complete: list[float] = []

    def insert(start: int) -> None:
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO requests (batch_id, idx, line, custom_id, body) VALUES (?,?,?,?,?)",
                      [(B, i, i + 1, f"r{i}", BODY) for i in range(start, start + 5000)])
        if split:
            c.executemany("INSERT INTO q (batch_id, idx) VALUES (?,?)", [(B, i) for i in range(start, start + 5000)])
        c.execute("COMMIT")

    for start in range(0, N, 5000):
        timed(lambda s=start: insert(s), ingest)  # type: ignore[misc]
    rows: list[tuple[str, int]] = []

    def take() -> None:
        c.execute("BEGIN IMMEDIATE")
        join = "JOIN requests r ON r.batch_id = q.batch_id AND r.idx = q.idx" if split else ""
        body = "r.custom_id, r.body" if split else "q.custom_id, q.body"
        rows[:] = c.execute(
            f"SELECT q.batch_id, q.idx, q.state, q.attempts, {body} FROM {queue} q {join} WHERE q.batch_id = ? "
            "AND q.state < 2 AND ((q.state = 0 AND q.not_before <= ?) OR (q.state = 1 AND q.lease_until < ?)) "
            "ORDER BY q.state, q.idx LIMIT ?", (B, 1e12, 1e12, C)).fetchall()
        if rows:
            c.execute(f"UPDATE {queue} SET state = 1, attempts = attempts + 1, attempt_id = 'st.' || idx, "
                      "lease_owner = 'me', lease_until = ? "
                      "WHERE batch_id = ? AND idx IN (SELECT value FROM json_each(?))",
                      (1e12, B, json.dumps([r[1] for r in rows])))
        c.execute("COMMIT")

    def store() -> None:
        c.execute("BEGIN IMMEDIATE")
        if split:
            c.executemany("UPDATE q SET state = 2, attempt_id = NULL, lease_owner = NULL, lease_until = NULL "
                          "WHERE batch_id = ? AND idx = ? AND attempt_id = ? AND state = 1",
                          [(B, r[1], f"st.{r[1]}") for r in rows])
            c.executemany("INSERT INTO results (batch_id, idx, status_code, response_body, request_id, input_tokens, "
                          "output_tokens) VALUES (?, ?, 200, ?, 'req_1', 3, 1)", [(B, r[1], RESPONSE) for r in rows])
        else:
            c.executemany("UPDATE requests SET state = 2, status_code = 200, response_body = ?, request_id = 'req_1', "
                          "input_tokens = 3, output_tokens = 1, attempt_id = NULL, lease_owner = NULL, "
                          "lease_until = NULL WHERE batch_id = ? AND idx = ? AND attempt_id = ? AND state = 1",
                          [(RESPONSE, B, r[1], f"st.{r[1]}") for r in rows])
        c.execute("COMMIT")

    while True:
        timed(take, claim)
        if not rows:
            break
        timed(store, complete)
    t = time.perf_counter()
    if split:
        read = c.execute("SELECT r.idx, q.custom_id, r.status_code, r.response_body FROM results r JOIN requests q "
                         "ON q.batch_id = r.batch_id AND q.idx = r.idx WHERE r.batch_id = ? ORDER BY r.idx", (B,))
    else:
        read = c.execute("SELECT idx, custom_id, status_code, response_body FROM requests WHERE batch_id = ? "
                         "AND state = 2 ORDER BY idx", (B,))
    assert sum(1 for _ in read) == N
    finalize = time.perf_counter() - t
    c.close()
    return {"ingest": sum(ingest) / N * 1e6, "claim": sum(claim) / N * 1e6, "complete": sum(complete) / N * 1e6,
            "read": finalize / N * 1e6}


if __name__ == "__main__":
    off = "--checkpoint-off-writer" in sys.argv
    for _ in range(2):
        for split in (False, True):
            f = layout(split, off)
            print(("split   " if split else "one row ") + ", ".join(f"{k} {v:.1f}" for k, v in f.items()))
