"""``Store``: every store port together, as one adapter (SQLite, PostgreSQL) provides them."""

from __future__ import annotations

from typing import Protocol

from freight.ports.batches import BatchStore
from freight.ports.cache import ResultCache
from freight.ports.events import EventStore, WebhookStore
from freight.ports.files import FileStore
from freight.ports.intake import IntakeStore
from freight.ports.keys import KeyStore
from freight.ports.lanes import LaneStore
from freight.ports.leases import StepLeases
from freight.ports.message_batches import MessageBatchStore
from freight.ports.queue import RequestQueue
from freight.ports.scheduling import SchedulingStore
from freight.ports.stats import StatsStore


class Store(FileStore, BatchStore, RequestQueue, KeyStore, MessageBatchStore, LaneStore, StepLeases, EventStore,
            WebhookStore, StatsStore, SchedulingStore, IntakeStore, ResultCache, Protocol):
    """Batches, files' metadata and every request with its one final result.

    Methods are synchronous and short; the async engine calls them from a worker thread. Users
    that need one concern only should ask for its port (``FileStore``, ``RequestQueue``, …).
    """

    #: Whether the store's work runs outside this process (a database server). Then the batch steps overlap
    #: their own Python with it (engine/ingest.py, engine/finalize.py); SQLite's runs in this process, under
    #: the interpreter's lock, and overlapping it measured no faster (docs/benchmarks.md#engine).
    out_of_process: bool

    def close(self) -> None: ...
