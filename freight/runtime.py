"""The composition root: the only place that builds the store, blobs, backends, services and engine.

Used by the API (``create_app`` takes a ``Runtime``), by every CLI command (``serve``, ``worker``,
``run``, ``keys``; ``validate`` through ``build_catalog(offline=True)``) and by the tests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freight.backends import build_backends, build_lanes
from freight.config import Settings
from freight.engine.engine import Engine
from freight.ports import Backend, BlobStore, Store, WorkHints
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.services.keys import KeyService
from freight.services.message_batches import MessageBatchService
from freight.store import open_store
from freight.store.blobs import LocalBlobStore
from freight.store.lock import DataDirLock


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass
class Runtime:
    settings: Settings
    store: Store
    blobs: BlobStore
    catalog: ModelCatalog
    files: FileService
    batches: BatchService
    engine: Engine
    keys: KeyService
    message_batches: MessageBatchService
    clock: SystemClock = field(default_factory=SystemClock)
    lock: DataDirLock | None = None

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.release()


#: Kinds of model whose construction reads an API key from the environment.
_KEYED_KINDS = frozenset({"openai", "openai-batch", "anthropic-batch"})


class _OfflineEnv(dict[str, str]):
    """The environment for an offline check: a key variable that is not set reads as a placeholder
    (no request is ever sent with it)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key) or "offline-check"


def build_catalog(settings: Settings, *, offline: bool = False) -> ModelCatalog:
    """The configured models. ``offline``: for checks that send no request (``freight validate``),
    so that models whose API key is not in the environment still count as served."""
    tables = settings.model_tables()
    if offline:
        import os

        env: Mapping[str, str] = _OfflineEnv(os.environ)
        tables = {name: ({**table, "env": env} if table.get("backend") in _KEYED_KINDS else table)
                  for name, table in tables.items()}
    return ModelCatalog(build_backends(tables, None if offline else settings.redis_url), build_lanes(tables))


def open_blobs(settings: Settings) -> BlobStore:
    """``--blobs``: an S3-compatible bucket (s3://bucket/prefix), a directory, or DATA_DIR/blobs."""
    location = settings.blobs
    if location and location.startswith("s3://"):
        from freight.store.blobs_s3 import S3BlobStore

        s3 = S3BlobStore(location)
        s3.check()
        return s3
    return LocalBlobStore(Path(location).expanduser() if location else settings.data_dir / "blobs",
                          reserve=settings.data_dir / "disk-reserve")


def build_runtime(settings: Settings, *, backends: list[Backend] | None = None, lock: bool = True,
                  models: bool = True, exclusive: bool = False) -> Runtime:
    """Everything a process needs. ``backends``: use these instead of the configured models (tests);
    ``models=False``: no models at all (``freight keys``); ``lock=False``: do not join the data dir's
    processes (no start-up clean-up, no batch-steps lease: an engine alone on its store, in tests);
    ``exclusive``: refuse to share the data dir (``freight run``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    data_lock = DataDirLock(settings.data_dir) if lock else None
    alone = data_lock.acquire(exclusive=exclusive) if data_lock is not None else False
    store: Store | None = None
    try:
        clock = SystemClock()
        store = open_store(settings.database_url, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous,
                           pool_size=settings.database_pool_size)
        blobs = open_blobs(settings)
        if backends is not None:
            catalog = ModelCatalog(backends, [])
        elif models:
            catalog = build_catalog(settings)
        else:
            catalog = ModelCatalog([], [])
        # Several processes may share the store (a data dir's SQLite, or PostgreSQL): the batch steps
        # run in the holder of a lease in it. Without the lock (tests), this engine is alone.
        shared = data_lock is not None or settings.database_url is not None
        # A process alone on its data dir at start leases under the data dir's id, so that once restarted
        # it knows its own leases; one that joins others gets a fresh id.
        owner = data_lock.engine_id() if alone and data_lock is not None else None
        engine = Engine(store, blobs, catalog, clock, settings.engine, steps=store if shared else None, owner=owner)
        if isinstance(store, WorkHints):  # a shared store: other processes' batches wake this engine
            store.listen_for_work(engine.wake)
        files = FileService(store, blobs, clock, settings.upload)
        batches = BatchService(store, clock, settings.window, on_change=engine.wake, quota=settings.quota)
        keys = KeyService(store, clock)
        message_batches = MessageBatchService(store, blobs, clock, settings.anthropic, settings.quota, engine.wake)
        if alone and settings.database_url is None:
            # No other process is on this data dir's SQLite store: every lease left behind belongs to
            # a dead one, so its requests can run again at once instead of after lease expiry, and a
            # blob no file refers to was being written when a process died. With others running (or
            # on a shared PostgreSQL store) neither is safe: their claims are live, their uploads in
            # flight; leases expire and are taken over instead.
            store.release_leases()
            engine.sweep_orphan_blobs()
        elif owner is not None:
            # On a shared store, only the leases this data dir's engine held before it stopped are
            # dead (this process had the data dir to itself): they can run again at once. Other
            # processes' leases are never reset: they expire and are taken over.
            store.release_leases(owner)
        if data_lock is not None and not exclusive:
            data_lock.share()
    except BaseException:
        if store is not None:
            store.close()
        if data_lock is not None:
            data_lock.release()
        raise
    return Runtime(settings, store, blobs, catalog, files, batches, engine, keys, message_batches, clock,
                   data_lock)
