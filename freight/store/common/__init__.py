"""The port methods, written once over named SQL: what differs between SQLite and PostgreSQL is
only the SQL files (freight/store/sql/<dialect>/) and how a transaction is opened."""

from freight.store.common.store import SqlStore

__all__ = ["SqlStore"]
