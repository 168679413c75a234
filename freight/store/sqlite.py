"""The embedded store: one SQLite database in WAL mode under the data dir.

One writer connection (``BEGIN IMMEDIATE`` for every write, so a claim is atomic) and one
reader connection, each behind its own lock; WAL lets readers run while a write is open.
``synchronous=FULL`` by default: a committed write survives a crash of the process and of the
machine.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from freight.domain import ids
from freight.domain.batches import TIMESTAMP_FIELD, Batch, BatchError, BatchStatus, RequestCounts, Usage
from freight.domain.errors import InsufficientStorage, RateLimited, StoreError
from freight.domain.files import File, FileStatus
from freight.domain.keys import ApiKey
from freight.domain.lanes import LaneSub, SubState
from freight.domain.message_batches import EndedCounts, MessageBatch
from freight.domain.requests import (
    WORKER_LOST,
    ClaimedRequest,
    Outcome,
    RequestState,
    Result,
)
from freight.ports import Completion, NewRequest, Page, Quota, Retry, StoredResult
from freight.wire import jsonx

_BATCH_COLUMNS = (
    "id, project, endpoint, input_file_id, completion_window, status, created_at, expires_at, in_progress_at, "
    "finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, output_file_id, "
    "error_file_id, errors, metadata, model, total, completed, failed, input_tokens, output_tokens, "
    "output_expires_after_s"
)
_FILE_COLUMNS = "id, project, filename, purpose, bytes, created_at, expires_at, status, status_details, lines"
_TERMINAL_SQL = "('completed', 'failed', 'expired', 'cancelled')"

SCHEMA_VERSION = 2
#: Columns added after version 1: (table, column, declaration).
_ADDED_COLUMNS = (
    ("files", "lines", "INTEGER"),
    ("files", "idempotency_key", "TEXT"),
)
_LATE_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS files_by_idempotency_key ON files(project, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)


def _store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """A clear StoreError for a failed SQLite call; "disk full" becomes InsufficientStorage."""
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return InsufficientStorage(f"The server is out of disk space ({what}: {exc}); nothing was stored.",
                                   code="insufficient_storage")
    return StoreError(f"{what}: {exc}")


def _batch_from_row(row: sqlite3.Row) -> Batch:
    errors = None
    if row["errors"]:
        errors = [BatchError(**e) for e in jsonx.loads(row["errors"])]
    return Batch(
        id=row["id"],
        project=row["project"],
        endpoint=row["endpoint"],
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        status=BatchStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        in_progress_at=row["in_progress_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        expired_at=row["expired_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        errors=errors,
        metadata=jsonx.loads(row["metadata"]) if row["metadata"] else None,
        model=row["model"],
        request_counts=RequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"]),
        usage=Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"]),
        output_expires_after_s=row["output_expires_after_s"],
    )


def _file_from_row(row: sqlite3.Row) -> File:
    return File(
        id=row["id"],
        project=row["project"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        status=FileStatus(row["status"]),
        status_details=row["status_details"],
        lines=row["lines"],
    )


def _result_from_row(row: sqlite3.Row) -> Result:
    return Result(
        status_code=row["status_code"],
        body=row["response_body"],
        request_id=row["request_id"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
    )


class SqliteStore:
    def __init__(self, path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30_000):
        self.path = str(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._writer = self._connect()
            self._writer.executescript(resources.files("freight.store").joinpath("schema.sql").read_text())
            self._migrate(self._writer)
            self._reader = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a data dir made by an older freight up to this schema (idempotent)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, declaration in _ADDED_COLUMNS:
                have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            for statement in _LATE_INDEXES:
                conn.execute(statement)
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        if self._synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"unknown sqlite synchronous mode {self._synchronous!r}")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _store_error("store write failed to start", exc) from exc
            try:
                yield conn
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error("store write failed", exc) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise _store_error("store write failed to commit", exc) from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                raise _store_error("store read failed", exc) from exc

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()

    # ---- files -------------------------------------------------------------------------
    def insert_file(self, f: File, blob_key: str, idempotency_key: str | None = None) -> File:
        with self._write() as c:
            if idempotency_key is not None:
                row = c.execute(
                    f"SELECT {_FILE_COLUMNS} FROM files WHERE project=? AND idempotency_key=?",
                    (f.project, idempotency_key),
                ).fetchone()
                if row is not None:
                    return _file_from_row(row)
            self._insert_file(c, f, blob_key, idempotency_key)
        return f

    @staticmethod
    def _insert_file(c: sqlite3.Connection, f: File, blob_key: str, idempotency_key: str | None = None) -> None:
        c.execute(
            "INSERT INTO files (id, project, filename, purpose, bytes, created_at, expires_at, status, "
            "status_details, blob_key, lines, idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (f.id, f.project, f.filename, f.purpose, f.bytes, f.created_at, f.expires_at, str(f.status),
             f.status_details, blob_key, f.lines, idempotency_key),
        )

    def find_file(self, project: str, idempotency_key: str) -> File | None:
        """The file created under this key, even if it was deleted since (a retry must not re-create it)."""
        with self._read() as c:
            row = c.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project=? AND idempotency_key=?", (project, idempotency_key)
            ).fetchone()
        return _file_from_row(row) if row else None

    def get_file(self, project: str, file_id: str) -> File | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id=? AND project=? AND deleted=0", (file_id, project)
            ).fetchone()
        return _file_from_row(row) if row else None

    def file_blob_key(self, file_id: str) -> str | None:
        with self._read() as c:
            row = c.execute("SELECT blob_key FROM files WHERE id=? AND deleted<2", (file_id,)).fetchone()
        return row["blob_key"] if row else None

    def list_files(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page:
        clauses = ["project=?", "deleted=0"]
        args: list[Any] = [project]
        if purpose is not None:
            clauses.append("purpose=?")
            args.append(purpose)
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        with self._read() as c:
            if after is not None:
                row = c.execute("SELECT rowid FROM files WHERE id=? AND project=?", (after, project)).fetchone()
                if row is None:
                    return Page([], False)
                clauses.append(f"rowid {cmp} ?")
                args.append(row["rowid"])
            rows = c.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(clauses)} ORDER BY rowid {direction} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return Page([_file_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def delete_file(self, project: str, file_id: str) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE files SET deleted=1 WHERE id=? AND project=? AND deleted=0", (file_id, project))
            return cur.rowcount == 1

    # ---- batches -----------------------------------------------------------------------
    def insert_batch(
        self, b: Batch, idempotency_key: str | None, quota: Quota | None = None, requests: int = 0
    ) -> Batch:
        with self._write() as c:
            if idempotency_key is not None:
                row = c.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE project=? AND idempotency_key=?",
                    (b.project, idempotency_key),
                ).fetchone()
                if row is not None:
                    return _batch_from_row(row)
            if quota is not None:
                self._check_quota(c, b.project, quota, requests)
            c.execute(
                "INSERT INTO batches (id, project, endpoint, input_file_id, completion_window, status, created_at, "
                "expires_at, metadata, output_expires_after_s, idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (b.id, b.project, b.endpoint, b.input_file_id, b.completion_window, str(b.status), b.created_at,
                 b.expires_at, jsonx.dumps(b.metadata).decode() if b.metadata is not None else None,
                 b.output_expires_after_s, idempotency_key),
            )
        return b

    @staticmethod
    def _check_quota(c: sqlite3.Connection, project: str, quota: Quota, requests: int) -> None:
        row = c.execute(
            "SELECT count(*) AS active, coalesce(sum(CASE WHEN b.total=0 THEN coalesce(f.lines, 0) "
            "ELSE b.total-b.completed-b.failed END), 0) AS queued FROM batches b "
            f"LEFT JOIN files f ON f.id=b.input_file_id WHERE b.project=? AND b.status NOT IN {_TERMINAL_SQL}",
            (project,),
        ).fetchone()
        active, queued = int(row["active"]), int(row["queued"])
        if quota.max_active_batches is not None and active >= quota.max_active_batches:
            raise RateLimited(
                f"This project has {active} active batches, its limit (limits.max_active_batches_per_project); "
                "wait for one to finish, or cancel one, then try again.", code="too_many_active_batches")
        if quota.max_queued_requests is not None and queued + requests > quota.max_queued_requests:
            raise RateLimited(
                f"This project has {queued} requests queued; this batch's {requests} more would pass its limit of "
                f"{quota.max_queued_requests} (limits.max_queued_requests_per_project). Try again when more "
                "requests have finished.", code="too_many_queued_requests")

    def get_batch(self, project: str | None, batch_id: str) -> Batch | None:
        with self._read() as c:
            if project is None:
                row = c.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)).fetchone()
            else:
                row = c.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=? AND project=?", (batch_id, project)
                ).fetchone()
        return _batch_from_row(row) if row else None

    def find_batch(self, project: str, idempotency_key: str) -> Batch | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE project=? AND idempotency_key=?",
                (project, idempotency_key),
            ).fetchone()
        return _batch_from_row(row) if row else None

    def list_batches(self, project: str, *, after: str | None, limit: int) -> Page:
        # Batches made through the OpenAI API only: a Message Batch is listed by /v1/messages/batches.
        openai_only = "AND id NOT IN (SELECT batch_id FROM message_batches)"
        with self._read() as c:
            if after is not None:
                row = c.execute("SELECT seq FROM batches WHERE id=? AND project=?", (after, project)).fetchone()
                if row is None:
                    return Page([], False)
                rows = c.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE project=? AND seq<? {openai_only} "
                    "ORDER BY seq DESC LIMIT ?",
                    (project, row["seq"], limit + 1),
                ).fetchall()
            else:
                rows = c.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE project=? {openai_only} ORDER BY seq DESC LIMIT ?",
                    (project, limit + 1),
                ).fetchall()
        return Page([_batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def active_batches(self) -> list[Batch]:
        with self._read() as c:
            rows = c.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE status NOT IN {_TERMINAL_SQL} ORDER BY seq"
            ).fetchall()
        return [_batch_from_row(r) for r in rows]

    def set_status(self, batch_id: str, expected: Sequence[BatchStatus], new: BatchStatus, at: int) -> Batch | None:
        ts = TIMESTAMP_FIELD.get(new)
        placeholders = ",".join("?" for _ in expected)
        sets = "status=?" + (f", {ts}=?" if ts else "")
        args: list[Any] = [str(new)] + ([at] if ts else [])
        with self._write() as c:
            cur = c.execute(
                f"UPDATE batches SET {sets} WHERE id=? AND status IN ({placeholders})",
                (*args, batch_id, *[str(s) for s in expected]),
            )
            if cur.rowcount != 1:
                return None
            row = c.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)).fetchone()
        return _batch_from_row(row)

    # ---- ingest ------------------------------------------------------------------------
    def clear_requests(self, batch_id: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM requests WHERE batch_id=?", (batch_id,))

    def insert_requests(self, batch_id: str, rows: Sequence[NewRequest]) -> None:
        with self._write() as c:
            c.executemany(
                "INSERT INTO requests (batch_id, idx, line, custom_id, body) VALUES (?,?,?,?,?)",
                [(batch_id, r.idx, r.line, r.custom_id, r.body) for r in rows],
            )

    def start_batch(self, batch_id: str, total: int, model: str | None, at: int) -> bool:
        # A batch cancelled while it was validating keeps its status, but gets its total: its
        # requests are all persisted and will each get a batch_cancelled line.
        with self._write() as c:
            cur = c.execute(
                "UPDATE batches SET total=?, model=?, "
                "in_progress_at=CASE WHEN status='validating' THEN ? ELSE in_progress_at END, "
                "status=CASE WHEN status='validating' THEN 'in_progress' ELSE status END "
                "WHERE id=? AND status IN ('validating', 'cancelling')",
                (total, model, at, batch_id),
            )
            return cur.rowcount == 1

    def fail_validation(self, batch_id: str, errors: Sequence[BatchError], at: int) -> bool:
        data = jsonx.dumps([{"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in errors])
        with self._write() as c:
            cur = c.execute(
                "UPDATE batches SET errors=?, "
                "failed_at=CASE WHEN status='validating' THEN ? ELSE failed_at END, "
                "status=CASE WHEN status='validating' THEN 'failed' ELSE status END "
                "WHERE id=? AND status IN ('validating', 'cancelling')",
                (data.decode(), at, batch_id),
            )
            if cur.rowcount == 1:
                c.execute("DELETE FROM requests WHERE batch_id=?", (batch_id,))
            return cur.rowcount == 1

    # ---- execution ---------------------------------------------------------------------
    def claim(
        self, batch_id: str, owner: str, now: float, lease_s: float, limit: int, max_attempts: int
    ) -> list[ClaimedRequest]:
        claimed: list[ClaimedRequest] = []
        with self._write() as c:
            status = c.execute("SELECT status FROM batches WHERE id=?", (batch_id,)).fetchone()
            if status is None or status["status"] != "in_progress":
                return []
            rows = c.execute(
                "SELECT idx, state, attempts, custom_id, body FROM requests WHERE batch_id=? AND state<2 AND "
                "((state=0 AND not_before<=?) OR (state=1 AND lease_until<?)) ORDER BY idx LIMIT ?",
                (batch_id, now, now, limit),
            ).fetchall()
            lost = 0
            updates = []
            for row in rows:
                if row["state"] == RequestState.RUNNING and row["attempts"] >= max_attempts:
                    c.execute(
                        "UPDATE requests SET state=2, attempt_id=NULL, lease_owner=NULL, lease_until=NULL, "
                        "error_code=?, error_message=? WHERE batch_id=? AND idx=?",
                        (WORKER_LOST, "The worker running this request was lost on its last allowed attempt "
                         f"({row['attempts']} of {max_attempts}).", batch_id, row["idx"]),
                    )
                    lost += 1
                    continue
                attempt_id = ids.new_attempt_id()
                updates.append((attempt_id, owner, now + lease_s, batch_id, row["idx"]))
                claimed.append(
                    ClaimedRequest(
                        batch_id=batch_id,
                        idx=row["idx"],
                        custom_id=row["custom_id"],
                        body=row["body"],
                        attempt_id=attempt_id,
                        attempts=row["attempts"] + 1,
                    )
                )
            c.executemany(
                "UPDATE requests SET state=1, attempts=attempts+1, attempt_id=?, lease_owner=?, lease_until=? "
                "WHERE batch_id=? AND idx=?",
                updates,
            )
            if lost:
                c.execute("UPDATE batches SET failed=failed+? WHERE id=?", (lost, batch_id))
        return claimed

    def renew(self, batch_id: str, attempt_ids: Sequence[str], until: float) -> int:
        with self._write() as c:
            cur = c.executemany(
                "UPDATE requests SET lease_until=? WHERE batch_id=? AND attempt_id=? AND state=1",
                [(until, batch_id, a) for a in attempt_ids],
            )
            return cur.rowcount

    def complete(self, batch_id: str, items: Sequence[Completion]) -> int:
        stored = succeeded = failed = tokens_in = tokens_out = 0
        with self._write() as c:
            for item in items:
                r = item.result
                cur = c.execute(
                    "UPDATE requests SET state=2, status_code=?, response_body=?, request_id=?, error_code=?, "
                    "error_message=?, input_tokens=?, output_tokens=?, attempt_id=NULL, lease_owner=NULL, "
                    "lease_until=NULL WHERE batch_id=? AND idx=? AND attempt_id=? AND state=1",
                    (r.status_code, r.body, r.request_id, r.error_code, r.error_message, r.input_tokens,
                     r.output_tokens, batch_id, item.idx, item.attempt_id),
                )
                if cur.rowcount != 1:
                    continue
                stored += 1
                if r.outcome is Outcome.SUCCEEDED:
                    succeeded += 1
                else:
                    failed += 1
                tokens_in += r.input_tokens
                tokens_out += r.output_tokens
            if stored:
                c.execute(
                    "UPDATE batches SET completed=completed+?, failed=failed+?, input_tokens=input_tokens+?, "
                    "output_tokens=output_tokens+? WHERE id=?",
                    (succeeded, failed, tokens_in, tokens_out, batch_id),
                )
        return stored

    def retry_later(self, batch_id: str, items: Sequence[Retry]) -> int:
        with self._write() as c:
            n = 0
            for item in items:
                cur = c.execute(
                    "UPDATE requests SET state=0, not_before=?, last_error=?, attempt_id=NULL, lease_owner=NULL, "
                    "lease_until=NULL WHERE batch_id=? AND idx=? AND attempt_id=? AND state=1",
                    (item.not_before, item.last_error, batch_id, item.idx, item.attempt_id),
                )
                n += cur.rowcount
            return n

    def close_unstarted(self, batch_id: str, result: Result, include_running: bool) -> int:
        states = "state<2" if include_running else "state=0"
        with self._write() as c:
            cur = c.execute(
                f"UPDATE requests SET state=2, status_code=?, response_body=?, request_id=?, error_code=?, "
                f"error_message=?, attempt_id=NULL, lease_owner=NULL, lease_until=NULL "
                f"WHERE batch_id=? AND {states}",
                (result.status_code, result.body, result.request_id, result.error_code, result.error_message,
                 batch_id),
            )
            n = cur.rowcount
            if n:
                column = "completed" if result.outcome is Outcome.SUCCEEDED else "failed"
                c.execute(f"UPDATE batches SET {column}={column}+? WHERE id=?", (n, batch_id))
            return n

    def open_counts(self, batch_id: str) -> tuple[int, int]:
        with self._read() as c:
            rows = c.execute(
                "SELECT state, count(*) AS n FROM requests WHERE batch_id=? AND state<2 GROUP BY state", (batch_id,)
            ).fetchall()
        counts = {row["state"]: row["n"] for row in rows}
        return counts.get(0, 0), counts.get(1, 0)

    def results(self, batch_id: str, after_idx: int, limit: int) -> list[StoredResult]:
        with self._read() as c:
            rows = c.execute(
                "SELECT idx, custom_id, status_code, response_body, request_id, error_code, error_message, "
                "input_tokens, output_tokens FROM requests WHERE batch_id=? AND idx>? AND state=2 ORDER BY idx "
                "LIMIT ?",
                (batch_id, after_idx, limit),
            ).fetchall()
        return [StoredResult(row["idx"], row["custom_id"], _result_from_row(row)) for row in rows]

    def finish_batch(
        self,
        batch_id: str,
        expected: Sequence[BatchStatus],
        new: BatchStatus,
        at: int,
        output_file: tuple[File, str] | None,
        error_file: tuple[File, str] | None,
    ) -> bool:
        ts = TIMESTAMP_FIELD[new]
        placeholders = ",".join("?" for _ in expected)
        with self._write() as c:
            still_open = c.execute(
                "SELECT count(*) AS n FROM requests WHERE batch_id=? AND state<2", (batch_id,)
            ).fetchone()["n"]
            if still_open:
                return False  # a request without its line: the files would lose it
            cur = c.execute(
                f"UPDATE batches SET status=?, {ts}=?, output_file_id=?, error_file_id=? "
                f"WHERE id=? AND status IN ({placeholders})",
                (str(new), at, output_file[0].id if output_file else None, error_file[0].id if error_file else None,
                 batch_id, *[str(s) for s in expected]),
            )
            if cur.rowcount != 1:
                return False
            for pair in (output_file, error_file):
                if pair is not None:
                    self._insert_file(c, pair[0], pair[1])
        return True

    def purgeable_files(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        """(file id, blob key) of files deleted or past ``expires_at`` that no active batch reads."""
        with self._read() as c:
            rows = c.execute(
                "SELECT f.id, f.blob_key FROM files f WHERE (f.deleted=1 OR (f.deleted=0 AND f.expires_at IS NOT NULL "
                "AND f.expires_at<=?)) AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id=f.id AND "
                "b.status NOT IN ('completed', 'failed', 'expired', 'cancelled')) LIMIT ?",
                (now, limit),
            ).fetchall()
        return [(row["id"], row["blob_key"]) for row in rows]

    def mark_purged(self, file_ids: Sequence[str]) -> None:
        """The bytes are gone: the file stays as a tombstone (deleted=2) so its id is never reused."""
        with self._write() as c:
            c.executemany("UPDATE files SET deleted=2 WHERE id=?", [(i,) for i in file_ids])

    def blob_keys(self) -> set[str]:
        with self._read() as c:
            return {row["blob_key"] for row in c.execute("SELECT blob_key FROM files WHERE deleted<2")}

    def release_leases(self) -> int:
        with self._write() as c:
            cur = c.execute(
                "UPDATE requests SET state=0, attempt_id=NULL, lease_owner=NULL, lease_until=NULL WHERE state=1"
            )
            return cur.rowcount

    # ---- API keys ----------------------------------------------------------------------
    def insert_api_key(self, key: ApiKey, secret_hash: str) -> None:
        with self._write() as c:
            c.execute("INSERT INTO api_keys (id, project, secret_hash, created_at) VALUES (?,?,?,?)",
                      (key.id, key.project, secret_hash, key.created_at))

    def get_api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._read() as c:
            row = c.execute("SELECT id, project, secret_hash, created_at, revoked_at FROM api_keys WHERE id=?",
                            (key_id,)).fetchone()
        if row is None:
            return None
        return ApiKey(row["id"], row["project"], row["created_at"], row["revoked_at"]), row["secret_hash"]

    def list_api_keys(self) -> list[ApiKey]:
        with self._read() as c:
            rows = c.execute("SELECT id, project, created_at, revoked_at FROM api_keys ORDER BY created_at, id")
            return [ApiKey(r["id"], r["project"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_api_key(self, key_id: str, at: int) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (at, key_id))
            return cur.rowcount == 1

    def has_api_keys(self) -> bool:
        with self._read() as c:
            return c.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    # ---- Anthropic Message Batches -----------------------------------------------------
    _MB_SELECT = (
        "SELECT " + ", ".join("b." + c.strip() for c in _BATCH_COLUMNS.split(","))
        + ", m.seq AS m_seq, m.requests AS m_requests, m.succeeded AS m_succeeded, m.errored AS m_errored, "
        "m.canceled AS m_canceled, m.expired AS m_expired FROM message_batches m JOIN batches b ON b.id=m.batch_id"
    )

    @staticmethod
    def _message_batch_from_row(row: sqlite3.Row) -> MessageBatch:
        ended = None
        if row["m_succeeded"] is not None:
            ended = EndedCounts(succeeded=row["m_succeeded"], errored=row["m_errored"], canceled=row["m_canceled"],
                                expired=row["m_expired"])
        return MessageBatch(batch=_batch_from_row(row), requests=row["m_requests"], ended=ended)

    def insert_message_batch(
        self, f: File, blob_key: str, b: Batch, requests: int, quota: Quota | None = None
    ) -> None:
        with self._write() as c:
            if quota is not None:
                self._check_quota(c, b.project, quota, requests)
            self._insert_file(c, f, blob_key)
            c.execute(
                "INSERT INTO batches (id, project, endpoint, input_file_id, completion_window, status, created_at, "
                "expires_at, metadata, output_expires_after_s) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (b.id, b.project, b.endpoint, b.input_file_id, b.completion_window, str(b.status), b.created_at,
                 b.expires_at, jsonx.dumps(b.metadata).decode() if b.metadata is not None else None,
                 b.output_expires_after_s),
            )
            c.execute("INSERT INTO message_batches (batch_id, project, requests) VALUES (?,?,?)",
                      (b.id, b.project, requests))

    def is_message_batch(self, batch_id: str) -> bool:
        with self._read() as c:
            return c.execute("SELECT 1 FROM message_batches WHERE batch_id=?", (batch_id,)).fetchone() is not None

    def get_message_batch(self, project: str, batch_id: str) -> MessageBatch | None:
        with self._read() as c:
            row = c.execute(self._MB_SELECT + " WHERE m.batch_id=? AND m.project=?", (batch_id, project)).fetchone()
        return self._message_batch_from_row(row) if row else None

    def list_message_batches(self, project: str, *, after: str | None, before: str | None, limit: int) -> Page:
        with self._read() as c:
            cursor = after if after is not None else before
            if cursor is not None:
                row = c.execute("SELECT seq FROM message_batches WHERE batch_id=? AND project=?",
                                (cursor, project)).fetchone()
                if row is None:
                    return Page([], False)
                if after is not None:
                    rows = c.execute(self._MB_SELECT + " WHERE m.project=? AND m.seq<? ORDER BY m.seq DESC LIMIT ?",
                                     (project, row["seq"], limit + 1)).fetchall()
                else:
                    rows = c.execute(self._MB_SELECT + " WHERE m.project=? AND m.seq>? ORDER BY m.seq ASC LIMIT ?",
                                     (project, row["seq"], limit + 1)).fetchall()
                    has_more = len(rows) > limit
                    return Page([self._message_batch_from_row(r) for r in reversed(rows[:limit])], has_more)
            else:
                rows = c.execute(self._MB_SELECT + " WHERE m.project=? ORDER BY m.seq DESC LIMIT ?",
                                 (project, limit + 1)).fetchall()
        return Page([self._message_batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    def settle_message_batch(self, batch_id: str) -> EndedCounts | None:
        with self._write() as c:
            row = c.execute(
                "SELECT b.status, m.succeeded, m.errored, m.canceled, m.expired FROM message_batches m "
                "JOIN batches b ON b.id=m.batch_id WHERE m.batch_id=?", (batch_id,)).fetchone()
            if row is None or row["status"] not in ("completed", "failed", "expired", "cancelled"):
                return None
            if row["succeeded"] is not None:
                return EndedCounts(row["succeeded"], row["errored"], row["canceled"], row["expired"])
            counts = c.execute(
                "SELECT coalesce(sum(status_code BETWEEN 200 AND 299), 0) AS ok, "
                "coalesce(sum(status_code IS NULL AND error_code='batch_cancelled'), 0) AS canceled, "
                "coalesce(sum(status_code IS NULL AND error_code='batch_expired'), 0) AS expired, "
                "count(*) AS n FROM requests WHERE batch_id=? AND state=2", (batch_id,)).fetchone()
            ended = EndedCounts(succeeded=counts["ok"], canceled=counts["canceled"], expired=counts["expired"],
                                errored=counts["n"] - counts["ok"] - counts["canceled"] - counts["expired"])
            c.execute("UPDATE message_batches SET succeeded=?, errored=?, canceled=?, expired=? WHERE batch_id=?",
                      (ended.succeeded, ended.errored, ended.canceled, ended.expired, batch_id))
        return ended

    def delete_message_batch(self, project: str, batch_id: str) -> bool:
        with self._write() as c:
            row = c.execute(
                "SELECT b.status, b.input_file_id, b.output_file_id, b.error_file_id FROM message_batches m "
                "JOIN batches b ON b.id=m.batch_id WHERE m.batch_id=? AND m.project=?", (batch_id, project)).fetchone()
            if row is None or row["status"] not in ("completed", "failed", "expired", "cancelled"):
                return False
            c.execute("DELETE FROM requests WHERE batch_id=?", (batch_id,))
            files = [row[k] for k in ("input_file_id", "output_file_id", "error_file_id") if row[k]]
            c.executemany("UPDATE files SET deleted=1 WHERE id=? AND deleted=0", [(f,) for f in files])
            c.execute("DELETE FROM message_batches WHERE batch_id=?", (batch_id,))
            c.execute("DELETE FROM batches WHERE id=?", (batch_id,))
        return True

    def restart_ingest(self, batch_id: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM requests WHERE batch_id=?", (batch_id,))
            c.execute("UPDATE batches SET completed=0, failed=0, input_tokens=0, output_tokens=0 "
                      "WHERE id=? AND status IN ('validating', 'cancelling')", (batch_id,))

    def insert_finished_requests(self, batch_id: str, rows: Sequence[tuple[NewRequest, Result]]) -> None:
        succeeded = sum(1 for _, r in rows if r.outcome is Outcome.SUCCEEDED)
        with self._write() as c:
            c.executemany(
                "INSERT INTO requests (batch_id, idx, line, custom_id, body, state, status_code, response_body, "
                "request_id, error_code, error_message) VALUES (?,?,?,?,?,2,?,?,?,?,?)",
                [(batch_id, q.idx, q.line, q.custom_id, q.body, r.status_code, r.body, r.request_id, r.error_code,
                  r.error_message) for q, r in rows],
            )
            c.execute("UPDATE batches SET completed=completed+?, failed=failed+? WHERE id=?",
                      (succeeded, len(rows) - succeeded, batch_id))

    # ---- batch lanes -------------------------------------------------------------------
    _LANE_COLUMNS = ("id, batch_id, round, state, requests, bytes, created_at, upload_id, upstream_id, create_sent_at, "
                     "upstream_status, completed, failed, cancel_sent")
    _LANE_SETTABLE = frozenset({"state", "upload_id", "upstream_id", "create_sent_at", "upstream_status", "completed",
                                "failed", "cancel_sent"})

    @staticmethod
    def _lane_sub_from_row(row: sqlite3.Row) -> LaneSub:
        return LaneSub(id=row["id"], batch_id=row["batch_id"], round=row["round"], state=SubState(row["state"]),
                       requests=row["requests"], bytes=row["bytes"], created_at=row["created_at"],
                       upload_id=row["upload_id"], upstream_id=row["upstream_id"],
                       create_sent_at=row["create_sent_at"], upstream_status=row["upstream_status"],
                       completed=row["completed"], failed=row["failed"], cancel_sent=bool(row["cancel_sent"]))

    def lane_unassigned(self, batch_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes, int]]:
        with self._read() as c:
            rows = c.execute(
                "SELECT r.idx, r.body, (SELECT count(*) FROM lane_items li WHERE li.batch_id=r.batch_id "
                "AND li.idx=r.idx) AS held FROM requests r WHERE r.batch_id=? AND r.state=0 AND r.idx>? AND NOT "
                "EXISTS (SELECT 1 FROM lane_items li JOIN lane_subs s ON s.id=li.sub_id WHERE "
                "li.batch_id=r.batch_id AND li.idx=r.idx AND s.state!='done') ORDER BY r.idx LIMIT ?",
                (batch_id, after_idx, limit),
            ).fetchall()
        return [(row["idx"], row["body"], row["held"]) for row in rows]

    def lane_plan(self, sub: LaneSub, idxs: Sequence[int]) -> None:
        with self._write() as c:
            c.execute(
                f"INSERT INTO lane_subs ({self._LANE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (sub.id, sub.batch_id, sub.round, str(sub.state), sub.requests, sub.bytes, sub.created_at,
                 sub.upload_id, sub.upstream_id, sub.create_sent_at, sub.upstream_status, sub.completed, sub.failed,
                 int(sub.cancel_sent)),
            )
            c.executemany("INSERT INTO lane_items (batch_id, idx, sub_id) VALUES (?,?,?)",
                          [(sub.batch_id, i, sub.id) for i in idxs])

    def lane_subs(self, batch_id: str, live_only: bool = True) -> list[LaneSub]:
        where = " AND state!='done'" if live_only else ""
        with self._read() as c:
            rows = c.execute(f"SELECT {self._LANE_COLUMNS} FROM lane_subs WHERE batch_id=?{where} "
                             "ORDER BY created_at, id", (batch_id,)).fetchall()
        return [self._lane_sub_from_row(r) for r in rows]

    def lane_bodies(self, sub_id: str, after_idx: int, limit: int) -> list[tuple[int, bytes]]:
        with self._read() as c:
            rows = c.execute(
                "SELECT r.idx, r.body FROM lane_items li JOIN requests r ON r.batch_id=li.batch_id AND r.idx=li.idx "
                "WHERE li.sub_id=? AND li.idx>? ORDER BY li.idx LIMIT ?", (sub_id, after_idx, limit)).fetchall()
        return [(row["idx"], row["body"]) for row in rows]

    def lane_items(self, sub_id: str) -> list[int]:
        with self._read() as c:
            return [row[0] for row in c.execute("SELECT idx FROM lane_items WHERE sub_id=? ORDER BY idx", (sub_id,))]

    def lane_update(self, sub_id: str, **fields: Any) -> None:
        unknown = set(fields) - self._LANE_SETTABLE
        if unknown:
            raise ValueError(f"not a settable lane_subs column: {sorted(unknown)}")
        values = [str(v) if isinstance(v, SubState) else int(v) if isinstance(v, bool) else v
                  for v in fields.values()]
        with self._write() as c:
            c.execute(f"UPDATE lane_subs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*values, sub_id))

    def lane_finish(self, sub_id: str, batch_id: str, results: Sequence[tuple[int, Result]]) -> int:
        with self._write() as c:
            state = c.execute("SELECT state FROM lane_subs WHERE id=?", (sub_id,)).fetchone()
            if state is None or state["state"] == "done":
                return 0  # finished before (a crash after the commit, then the same download again)
            still_open = {row[0] for row in c.execute(
                "SELECT r.idx FROM lane_items li JOIN requests r ON r.batch_id=li.batch_id AND r.idx=li.idx "
                "WHERE li.sub_id=? AND r.state<2", (sub_id,))}
            fresh = [(idx, r) for idx, r in results if idx in still_open]
            c.executemany(
                "UPDATE requests SET state=2, status_code=?, response_body=?, request_id=?, error_code=?, "
                "error_message=?, input_tokens=?, output_tokens=?, attempts=attempts+1, attempt_id=NULL, "
                "lease_owner=NULL, lease_until=NULL WHERE batch_id=? AND idx=? AND state<2",
                [(r.status_code, r.body, r.request_id, r.error_code, r.error_message, r.input_tokens, r.output_tokens,
                  batch_id, idx) for idx, r in fresh],
            )
            if fresh:
                succeeded = sum(1 for _, r in fresh if r.outcome is Outcome.SUCCEEDED)
                c.execute(
                    "UPDATE batches SET completed=completed+?, failed=failed+?, input_tokens=input_tokens+?, "
                    "output_tokens=output_tokens+? WHERE id=?",
                    (succeeded, len(fresh) - succeeded, sum(r.input_tokens for _, r in fresh),
                     sum(r.output_tokens for _, r in fresh), batch_id),
                )
            c.execute("UPDATE lane_subs SET state='done' WHERE id=?", (sub_id,))
        return len(fresh)

    def lane_progress(self, batch_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not batch_ids:
            return {}
        marks = ",".join("?" for _ in batch_ids)
        with self._read() as c:
            rows = c.execute(
                f"SELECT batch_id, sum(completed) AS ok, sum(failed) AS bad FROM lane_subs WHERE batch_id IN ({marks}) "
                "AND state='running' GROUP BY batch_id", tuple(batch_ids)).fetchall()
        return {row["batch_id"]: (row["ok"] or 0, row["bad"] or 0) for row in rows}
