"""The shared store: PostgreSQL (psycopg 3 and psycopg-pool), for many processes on many machines.

Same behaviour as the SQLite store for every port method (freight/store/common/ holds them both;
only the SQL differs, in freight/store/sql/postgres/). Claims lock their rows ``FOR UPDATE SKIP
LOCKED``; results are fenced by attempt id; leases expire and are taken over, never reset by
another process. The schema is made by ``freight migrate``, and checked when the store opens.
Writes that make work tell other processes at commit (LISTEN/NOTIFY, ``WorkHints``): a hint only.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from freight.domain.errors import StoreError
from freight.store.common import SqlStore
from freight.store.common.queue import ClaimHints
from freight.store.postgres.database import PostgresDatabase, describe
from freight.store.postgres.hints import Listener
from freight.store.postgres.migrate import check_schema

__all__ = ["PostgresStore"]


class PostgresStore(SqlStore):
    _hints = True
    out_of_process = True

    def __init__(self, url: str, *, pool_size: int = 10, check: bool = True):
        self.url = url
        self._listeners: list[Listener] = []
        db = PostgresDatabase(url, min_size=1, max_size=pool_size)
        if check:
            try:
                with db.pool.connection() as conn:
                    check_schema(conn, url)
            except psycopg.Error as exc:
                db.close()
                raise StoreError(f"cannot read the schema of {describe(url)}: {exc}") from exc
            except BaseException:
                db.close()
                raise
        super().__init__(db)
        self._claim_hints = ClaimHints()  # (its open-requests index keeps dead entries until a vacuum)

    def listen_for_work(self, wake: Callable[[], None]) -> None:
        self._listeners.append(Listener(self.url, wake))

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        super().close()
