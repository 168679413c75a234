"""The composition root: builds the store, blobs, backends, services and engine from Settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from freight.backends import build_backends, build_lanes
from freight.config import Settings
from freight.engine.engine import Engine
from freight.ports import Backend, Store, WorkHints
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.services.keys import KeyService
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
    blobs: LocalBlobStore
    catalog: ModelCatalog
    files: FileService
    batches: BatchService
    engine: Engine
    keys: KeyService
    clock: SystemClock = field(default_factory=SystemClock)
    lock: DataDirLock | None = None

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def build_runtime(settings: Settings, *, backends: list[Backend] | None = None, lock: bool = True) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    data_lock = None
    if lock:
        data_lock = DataDirLock(settings.data_dir)
        data_lock.acquire()
    try:
        clock = SystemClock()
        store = open_store(settings.database_url, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous,
                           pool_size=settings.database_pool_size)
        blobs = LocalBlobStore(settings.data_dir / "blobs")
        catalog = ModelCatalog(backends if backends is not None else build_backends(settings.model_tables()),
                               build_lanes(settings.model_tables()) if backends is None else [])
        owner = data_lock.engine_id() if data_lock is not None else None
        engine = Engine(store, blobs, catalog, clock, settings.engine, owner=owner)
        if isinstance(store, WorkHints):  # a shared store: other processes' batches wake this engine
            store.listen_for_work(engine.wake)
        files = FileService(store, blobs, clock, settings.upload)
        batches = BatchService(store, clock, settings.window, on_change=engine.wake, quota=settings.quota)
        keys = KeyService(store, clock)
        if owner is not None:
            # Leases this data dir's engine held before it stopped are dead (this process holds the
            # lock now): their requests can run again at once instead of after lease expiry. Other
            # processes' leases are never reset: they expire and are taken over.
            store.release_leases(owner)
            engine.sweep_orphan_blobs()
    except BaseException:
        if data_lock is not None:
            data_lock.release()
        raise
    return Runtime(settings, store, blobs, catalog, files, batches, engine, keys, clock, data_lock)
