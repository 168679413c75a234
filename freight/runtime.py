"""The composition root: builds the store, blobs, backends, services and engine from Settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from freight.backends import build_backends, build_lanes
from freight.config import Settings
from freight.engine.engine import Engine
from freight.ports import Backend, Store
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
        engine = Engine(store, blobs, catalog, clock, settings.engine)
        files = FileService(store, blobs, clock, settings.upload)
        batches = BatchService(store, clock, settings.window, on_change=engine.wake, quota=settings.quota)
        keys = KeyService(store, clock)
        if data_lock is not None:
            if settings.database_url is None:
                # This process is the only engine on this SQLite store: every lease left behind belongs
                # to a dead process, so its requests can run again at once instead of after lease expiry.
                # A shared store is never reset: other processes' leases expire and are taken over.
                store.release_leases()
            engine.sweep_orphan_blobs()
    except BaseException:
        if data_lock is not None:
            data_lock.release()
        raise
    return Runtime(settings, store, blobs, catalog, files, batches, engine, keys, clock, data_lock)
