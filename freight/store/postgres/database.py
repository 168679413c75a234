"""PostgreSQL through a psycopg 3 connection pool: every port method is one short transaction
on a pooled connection (committed when it ends, rolled back on an exception)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from freight.domain.errors import InsufficientStorage, StoreError
from freight.store.common.db import Columns, Params, Row
from freight.store.queries import queries


def describe(url: str) -> str:
    """Where a database URL points, without its password (for messages)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "the database"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{host}{port}/{info.get('dbname') or ''}"


def store_error(what: str, exc: psycopg.Error) -> StoreError:
    if isinstance(exc, pg_errors.DiskFull | pg_errors.OutOfMemory):
        return InsufficientStorage(f"The database is out of space ({what}: {exc}); nothing was stored.",
                                   code="insufficient_storage")
    return StoreError(f"{what}: {exc}")


_BINARY_PARAM = re.compile(r"%\((\w+)\)s")


class PostgresTx:
    def __init__(self, conn: psycopg.Connection[Any], named: dict[str, str]):
        self._c = conn
        self._q = named

    def one(self, name: str, params: Params | None = None) -> Row | None:
        return self._c.execute(self._q[name], params or {}).fetchone()

    def all(self, name: str, params: Params | None = None) -> list[Row]:
        return self._c.execute(self._q[name], params or {}).fetchall()

    def tuples(self, name: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        with self._c.cursor(row_factory=tuple_row) as cur:
            return cur.execute(self._q[name], params or {}).fetchall()

    def run(self, name: str, params: Params | None = None) -> int:
        return self._c.execute(self._q[name], params or {}).rowcount

    def many(self, name: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        with self._c.cursor() as cur:
            cur.executemany(self._q[name], rows)
            return cur.rowcount

    def bulk(self, name: str, columns: Columns) -> int:
        if not columns or not len(next(iter(columns.values()))):
            return 0
        # Arrays sent in binary: the text format quotes every element (a regular expression each).
        return self._c.execute(_BINARY_PARAM.sub(r"%(\1)b", self._q[name]), columns).rowcount

    def each(self, name: str, rows: Sequence[Params]) -> list[int]:
        if not rows:
            return []
        counts = []
        with self._c.cursor() as cur:
            cur.executemany(self._q[name], rows, returning=True)  # one pipeline, a result per row
            while True:
                counts.append(cur.rowcount)
                if not cur.nextset():
                    break
        return counts

    def array(self, values: Sequence[Any]) -> Any:
        return list(values)


def connect(url: str, *, timeout_s: float = 10.0, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection, or a ``StoreError`` that says where and why in one line (a database that is down or
    unreachable fails in ``timeout_s``, not after a pool's retries)."""
    try:
        return psycopg.connect(url, connect_timeout=max(1, round(timeout_s)), **kwargs)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to {describe(url)}: {' '.join(str(exc).split())}") from exc


class PostgresDatabase:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 30.0):
        self.url = url
        self._named = queries("postgres")
        with connect(url, timeout_s=min(timeout_s, 10.0), autocommit=True):
            pass  # (the pool below would retry a database that is down for timeout_s, logging every try)
        self.pool = ConnectionPool(url, min_size=min(min_size, max_size), max_size=max_size, timeout=timeout_s,
                                   kwargs={"row_factory": dict_row, "autocommit": False}, open=False,
                                   name="freight")
        try:
            self.pool.open(wait=True, timeout=timeout_s)
        except (psycopg.Error, PoolTimeout) as exc:
            self.pool.close()
            raise StoreError(f"cannot connect to {describe(url)}: {exc}") from exc

    @contextlib.contextmanager
    def _tx(self, what: str, durable: bool = True) -> Iterator[PostgresTx]:
        try:
            with self.pool.connection() as conn:
                if not durable:  # this transaction only (see Database.write)
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield PostgresTx(conn, self._named)
        except psycopg.Error as exc:
            raise store_error(what, exc) from exc

    def write(self, *, durable: bool = True) -> contextlib.AbstractContextManager[PostgresTx]:
        return self._tx("store write failed", durable)

    def read(self) -> contextlib.AbstractContextManager[PostgresTx]:
        return self._tx("store read failed")

    def close(self) -> None:
        self.pool.close()

