"""The small seam under the port methods: a transaction that runs named queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

#: A result row: its columns by name (``sqlite3.Row``, psycopg's ``dict_row``).
Row = Any
Params = Mapping[str, Any]
#: Many rows' parameters by column: each name maps to a sequence of the rows' values, all of one length.
Columns = Mapping[str, Sequence[Any]]


class Tx(Protocol):
    """One transaction (a read-only one for ``Database.read``)."""

    def one(self, name: str, params: Params | None = None) -> Row | None: ...
    def all(self, name: str, params: Params | None = None) -> list[Row]: ...
    def tuples(self, name: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """``all``'s rows as plain tuples, their columns in the statement's order: for the queue's hot
        reads, where looking each column up by name cost more than the rest of the row's handling."""
        ...

    def run(self, name: str, params: Params | None = None) -> int:
        """Execute; how many rows it changed."""
        ...

    def many(self, name: str, rows: Sequence[Params]) -> int:
        """Execute once per parameter set; how many rows they changed together."""
        ...

    def bulk(self, name: str, columns: Columns) -> int:
        """Many rows in one go, their parameters by column (a chunk is built column by column, not as a
        dict per row); how many rows they changed together. SQLite: an executemany of positional rows
        zipped from the columns; PostgreSQL: one statement, each parameter an array (``unnest`` in the SQL)."""
        ...

    def each(self, name: str, rows: Sequence[Params]) -> list[int]:
        """Execute once per parameter set (pipelined where the driver can); how many rows each changed."""
        ...

    def array(self, values: Sequence[Any]) -> Any:
        """A list as one query parameter (SQLite: JSON for ``json_each``; PostgreSQL: an array)."""
        ...


class Database(Protocol):
    def write(self, *, durable: bool = True) -> AbstractContextManager[Tx]:
        """A read-write transaction, committed when the block ends, rolled back on an exception.

        ``durable=False``: the commit need not wait for the disk (PostgreSQL's asynchronous commit; SQLite
        ignores it), for writes whose loss in a crash of the database server costs nothing but a rerun:
        leases (a lost lease leaves the request claimable again and fences the attempt that held it) and
        usage figures. Results are always durable. A later durable commit makes every earlier one durable.

        Store failures come out as ``StoreError`` (``InsufficientStorage`` when the disk is full)."""
        ...

    def read(self) -> AbstractContextManager[Tx]: ...
    def close(self) -> None: ...
