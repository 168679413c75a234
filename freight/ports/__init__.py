"""The seams between freight's core and its adapters: the only interfaces there are.

- the store, by concern: ``FileStore``, ``BatchStore``, ``RequestQueue``, ``KeyStore``,
  ``MessageBatchStore``, ``LaneStore``, ``EventStore`` (the batch events outbox), ``WebhookStore``,
  ``SchedulingStore``; ``Store`` is all of them (what one adapter provides);
- ``StepLeases``: which process runs the batch steps;
  ``WorkHints``, optional: a shared store waking other processes;
- ``BlobStore``: the bytes of files (inputs, outputs, errors);
- ``Backend``: a way of executing requests (a local model, an HTTP endpoint); ``BatchLane``: a
  provider's own batch API;
- ``ResultCache``: answers kept by their request's canonical key (the result cache).

Store methods are synchronous and short; the async engine calls them from a worker thread.
"""

from freight.domain.quota import Quota
from freight.ports.backends import Backend, BatchLane, ModelInfo
from freight.ports.batches import BatchStore
from freight.ports.blobs import BlobStore, BlobWriter
from freight.ports.cache import CachedAnswer, ResultCache, answering_for, on_behalf_of
from freight.ports.events import EventStore, WebhookStore
from freight.ports.files import FileStore
from freight.ports.hints import WorkHints
from freight.ports.intake import IntakeMessage, IntakeStore
from freight.ports.keys import KeyStore
from freight.ports.lanes import LaneStore
from freight.ports.leases import StepLeases
from freight.ports.message_batches import MessageBatchStore
from freight.ports.queue import RequestQueue
from freight.ports.records import Completion, NewRequest, Page, Retry, StoredResult
from freight.ports.scheduling import SchedulingStore
from freight.ports.stats import StatsStore, StoreStats
from freight.ports.store import Store
from freight.ports.withdrawal import WITHDRAWN, Withdrawal, Withdrawn, current_withdrawal

__all__ = [
    "WITHDRAWN",
    "Backend",
    "BatchLane",
    "BatchStore",
    "BlobStore",
    "BlobWriter",
    "CachedAnswer",
    "Completion",
    "EventStore",
    "FileStore",
    "IntakeMessage",
    "IntakeStore",
    "KeyStore",
    "LaneStore",
    "MessageBatchStore",
    "ModelInfo",
    "NewRequest",
    "Page",
    "Quota",
    "RequestQueue",
    "ResultCache",
    "Retry",
    "SchedulingStore",
    "StatsStore",
    "StepLeases",
    "Store",
    "StoreStats",
    "StoredResult",
    "WebhookStore",
    "Withdrawal",
    "Withdrawn",
    "WorkHints",
    "answering_for",
    "current_withdrawal",
    "on_behalf_of",
]
