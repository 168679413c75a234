"""One SQLite database in WAL mode: one writer connection (``BEGIN IMMEDIATE`` for every write,
so a claim is atomic) and one reader connection, each behind its own lock; WAL lets readers run
while a write is open. ``synchronous=FULL`` by default: a committed write survives a crash of the
process and of the machine."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from freight.domain.errors import InsufficientStorage, StoreError
from freight.store.common.db import Columns, Params, Row
from freight.store.queries import positional, queries


def store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """A clear StoreError for a failed SQLite call; "disk full" becomes InsufficientStorage."""
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return InsufficientStorage(f"The server is out of disk space ({what}: {exc}); nothing was stored.",
                                   code="insufficient_storage")
    return StoreError(f"{what}: {exc}")


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection, named: dict[str, str]):
        self._c = conn
        self._q = named

    def one(self, name: str, params: Params | None = None) -> Row | None:
        return self._c.execute(self._q[name], params or {}).fetchone()

    def all(self, name: str, params: Params | None = None) -> list[Row]:
        return self._c.execute(self._q[name], params or {}).fetchall()

    def tuples(self, name: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        cursor = self._c.cursor()
        cursor.row_factory = None
        rows: list[tuple[Any, ...]] = cursor.execute(self._q[name], params or {}).fetchall()
        return rows

    def run(self, name: str, params: Params | None = None) -> int:
        return self._c.execute(self._q[name], params or {}).rowcount

    def many(self, name: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        return self._c.executemany(self._q[name], rows).rowcount

    def bulk(self, name: str, columns: Columns) -> int:
        sql, order = positional(self._q[name])
        if not order or not len(columns[order[0]]):
            return 0
        return self._c.executemany(sql, zip(*(columns[key] for key in order), strict=True)).rowcount

    def each(self, name: str, rows: Sequence[Params]) -> list[int]:
        sql = self._q[name]
        return [self._c.execute(sql, row).rowcount for row in rows]

    def array(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))


class _Checkpointer:
    """Copies the WAL back into the database file from a thread of its own (``PRAGMA
    wal_checkpoint(PASSIVE)``, which never waits for the writer nor blocks it), so that the writer's
    commits do not stop to do it: with SQLite's automatic checkpoint, the commit that crosses
    ``wal_autocheckpoint`` pages copies them and syncs the file, which cost the queue's writes about
    40% of their time. The writer keeps a high automatic threshold as a backstop."""

    INTERVAL_S = 0.2

    def __init__(self, connect: Callable[[], sqlite3.Connection]):
        self._connect = connect
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freight-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        self._dirty.set()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error:
            return  # the writer's automatic checkpoint still bounds the WAL
        truncated = True
        try:
            while not self._stop.is_set():
                if not self._dirty.wait(self.INTERVAL_S):
                    if not truncated:
                        # Quiet for a while: give the WAL file's disk space back (this waits for the
                        # writer, which is idle now), so that a full disk finds it empty, not reusable.
                        truncated = self._checkpoint(conn, "TRUNCATE")
                    continue
                self._dirty.clear()
                truncated = False
                self._checkpoint(conn, "PASSIVE")
                self._stop.wait(self.INTERVAL_S)
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, mode: str) -> bool:
        try:
            busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return False
        return not busy

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=10)


class SqliteDatabase:
    #: The writer's own automatic checkpoint (pages of the WAL): only when the checkpoint thread falls behind.
    WRITER_AUTOCHECKPOINT = 16_384

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30_000):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"unknown sqlite synchronous mode {synchronous!r}")
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._named = queries("sqlite")
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer = self.connect()
        try:
            self._reader = self.connect()
        except BaseException:
            self._writer.close()
            raise
        self._writer.execute(f"PRAGMA wal_autocheckpoint={self.WRITER_AUTOCHECKPOINT}")
        self._checkpointer = _Checkpointer(self._checkpoint_connection)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def _checkpoint_connection(self) -> sqlite3.Connection:
        conn = self.connect()
        conn.execute("PRAGMA busy_timeout=100")  # a TRUNCATE holds writers back while it waits: never long
        return conn

    @property
    def writer(self) -> sqlite3.Connection:
        return self._writer

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[SqliteTx]:
        # (``durable`` is ignored: the connection's ``synchronous`` mode applies to every commit.)
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise store_error("store write failed to start", exc) from exc
            try:
                yield SqliteTx(conn, self._named)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise store_error("store write failed", exc) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise store_error("store write failed to commit", exc) from exc
            self._checkpointer.wrote()

    @contextlib.contextmanager
    def read(self) -> Iterator[SqliteTx]:
        with self._read_lock:
            try:
                yield SqliteTx(self._reader, self._named)
            except sqlite3.Error as exc:
                raise store_error("store read failed", exc) from exc

    def close(self) -> None:
        self._checkpointer.close()
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()
