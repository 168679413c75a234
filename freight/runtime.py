"""The composition root: the only place that builds the store, blobs, backends, services and engine.

Used by the API (``create_app`` takes a ``Runtime``), by every CLI command (``serve``, ``worker``,
``run``, ``keys``; ``validate`` through ``build_catalog(offline=True)``) and by the tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from freight.backends import build_backends, build_lanes
from freight.backends.result_cache import CacheSetup
from freight.config import Settings
from freight.domain.errors import ConfigError
from freight.domain.files import File
from freight.engine.engine import Engine
from freight.engine.step_lease import BATCH_STEPS
from freight.intake.core import Intake
from freight.intake.runner import Source
from freight.observe.deliver import WebhookDeliverer
from freight.observe.metrics import MeteredBackend, ProcessMeter
from freight.ports import Backend, BlobStore, Store, WorkHints
from freight.services.batches import BatchService
from freight.services.budget_guard import BudgetedQueue
from freight.services.catalog import ModelCatalog
from freight.services.cost import CostControls
from freight.services.files import FileService
from freight.services.keys import KeyService
from freight.services.message_batches import MessageBatchService
from freight.services.scheduling import held_extension
from freight.services.webhooks import WebhookService
from freight.store import make_data_dir, open_store
from freight.store.blobs import LocalBlobStore
from freight.store.lock import DataDirLock

log = logging.getLogger("freight")


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
    #: Prices and caps: the Batch object's ``freight`` figures, and the budget checks.
    cost: CostControls
    webhooks: WebhookService
    #: Sends webhook deliveries from the batch events outbox (beside the engine, under its own lease).
    deliverer: WebhookDeliverer
    #: This process's own metrics (its backends' calls); the rest are read from the store.
    meter: ProcessMeter
    clock: SystemClock = field(default_factory=SystemClock)
    lock: DataDirLock | None = None
    #: ``[intake."name"]``: each intake with its source, run beside the engine (``run_intakes``).
    intakes: list[tuple[Intake, Source]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """The background work of a serving or worker process: the engine and, beside it, the
        webhook deliverer (a subscriber of the events the engine's status changes write)."""
        deliverer = asyncio.create_task(self.deliverer.run(stop))
        try:
            await self.engine.run(stop)
        finally:
            stop.set()
            await deliverer

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


def queued_requests(store: Store, model: str) -> int:
    """The model's requests waiting in the store (what models placed on Ray scale with)."""
    return store.stats(False).open_requests.get((model, "queued"), 0)


def build_catalog(settings: Settings, *, offline: bool = False, cache: CacheSetup | None = None,
                  queue_depth: Callable[[str], int] | None = None) -> ModelCatalog:
    """The configured models. ``offline``: for checks that send no request (``freight validate``),
    so that models whose API key is not in the environment still count as served. ``queue_depth``:
    a model's queued requests (``queued_requests``), for models placed on Ray."""
    tables = settings.model_tables()
    if offline:
        import os

        env: Mapping[str, str] = _OfflineEnv(os.environ)
        tables = {name: ({**table, "env": env} if table.get("backend") in _KEYED_KINDS else table)
                  for name, table in tables.items()}
    return ModelCatalog(build_backends(tables, cache, None if offline else settings.redis_url,
                                       ray_address=settings.ray_address, queue_depth=queue_depth),
                        build_lanes(tables))


def open_blobs(settings: Settings) -> BlobStore:
    """``--blobs``: an S3-compatible bucket (s3://bucket/prefix), a directory, or DATA_DIR/blobs."""
    location = settings.blobs
    if location and location.startswith("s3://"):
        from freight.store.blobs_s3 import S3BlobStore

        s3 = S3BlobStore(location)
        s3.check()
        return s3
    root = Path(location).expanduser() if location else settings.data_dir / "blobs"
    if not location and settings.database_url:
        log.warning("files are kept in this process's own data dir (%s): with --database-url, every freight "
                    "process that shares the database must share --blobs too (docs/deployment.md), else a batch "
                    "made here cannot be read elsewhere", root, extra={"event": "blobs_not_shared"})
    try:
        return LocalBlobStore(root, reserve=settings.data_dir / "disk-reserve")
    except OSError as exc:  # (a directory that cannot be made or written: the setting's mistake, not a crash)
        what = f"--blobs {location}" if location else f"the data dir's blobs ({root})"
        raise ConfigError(f"{what}: cannot keep files there: {exc.strerror or exc}") from None


def _open_file(store: Store, blobs: BlobStore, f: File) -> IO[bytes] | None:
    key = store.file_blob_key(f.id)
    return blobs.open(key) if key is not None and blobs.exists(key) else None


def build_intakes(settings: Settings, store: Store, files: FileService, batches: BatchService,
                  catalog: ModelCatalog, clock: SystemClock) -> list[tuple[Intake, Source]]:
    """The configured intakes (docs/intake.md); a broker is reached only once they run."""
    out: list[tuple[Intake, Source]] = []
    for cfg in settings.intake.values():
        source: Source
        if cfg.kind == "redis":
            from freight.intake.redis_source import RedisSource

            source = RedisSource(cfg)
        elif cfg.kind == "amqp":
            from freight.intake.amqp_source import AmqpSource

            source = AmqpSource(cfg)
        else:
            from freight.intake.http_source import HttpSource

            source = HttpSource()
        out.append((Intake(cfg, store, files, batches, clock, lambda: {m.id for m in catalog.models()},
                           model_check=catalog.check), source))
    return out


def tune_gc() -> None:
    """Garbage collection for a long-running process (``serve``, ``worker``, ``run``), once it has started.

    What start-up made (modules, classes, the runtime) moves to the permanent generation, so that full
    collections stop walking it again and again; and the youngest generation is collected every 20,000
    allocations instead of 700 (the engine allocates a few short-lived objects per request and makes
    almost no cycles). With the defaults, collections took a third of the engine's CPU time on 50,000
    requests of the scripted backend (docs/benchmarks.md#engine).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def build_runtime(settings: Settings, *, backends: list[Backend] | None = None, lock: bool = True,
                  models: bool = True, exclusive: bool = False) -> Runtime:
    """Everything a process needs. ``backends``: use these instead of the configured models (tests);
    ``models=False``: no models at all (``freight keys``); ``lock=False``: do not join the data dir's
    processes (no start-up clean-up, no batch-steps lease: an engine alone on its store, in tests);
    ``exclusive``: refuse to share the data dir (``freight run``)."""
    make_data_dir(settings.data_dir)
    data_lock = DataDirLock(settings.data_dir) if lock else None
    alone = data_lock.acquire(exclusive=exclusive) if data_lock is not None else False
    store: Store | None = None
    try:
        clock = SystemClock()
        calendar = settings.engine.scheduling.calendar
        cost = CostControls(settings.price_book(), clock,
                            {name: p.max_cost_usd for name, p in settings.projects.items()}, calendar=calendar)
        cost.extensions.append(held_extension(calendar, clock))
        store = open_store(settings.database_url, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous,
                           pool_size=settings.database_pool_size)
        blobs = open_blobs(settings)
        cost.open_file = functools.partial(_open_file, store, blobs)
        cost.max_line_bytes = settings.input_limits.max_line_bytes
        if backends is not None:
            catalog = ModelCatalog(backends, [])
        elif models:
            cache = (CacheSetup(store, clock, settings.cache.ttl_s, settings.cache.max_bytes,
                                scope=settings.cache.scope) if settings.cache.enabled else None)
            catalog = build_catalog(settings, cache=cache, queue_depth=functools.partial(queued_requests, store))
        else:
            catalog = ModelCatalog([], [])
        # Alone on its data dir, the engine leases under the data dir's own id (engine.id), so that a
        # restart knows its predecessor's leases; beside others, under an id of its own.
        owner = data_lock.engine_id() if alone and data_lock is not None else None
        meter = ProcessMeter()
        catalog = ModelCatalog([MeteredBackend(b, meter) for b in catalog.backends], catalog.lanes)
        # Several processes may share the store (a data dir's SQLite, or PostgreSQL): the batch steps
        # run in the holder of a lease in it. Without the lock (tests), this engine is alone.
        shared = data_lock is not None or settings.database_url is not None
        engine_settings = settings.engine
        if exclusive and alone and not store.out_of_process:  # freight run on SQLite: no thread for chunk calls
            engine_settings = dataclasses.replace(engine_settings, inline_chunk_calls=True)
        # Claims go through the budget check (services/budget_guard.py): a capped batch stops starting work.
        engine = Engine(cast(Store, BudgetedQueue(store, cost)), blobs, catalog, clock, engine_settings,
                        owner=owner, steps=store if shared else None)
        if isinstance(store, WorkHints):  # a shared store: other processes' batches wake this engine
            store.listen_for_work(engine.wake)
        files = FileService(store, blobs, clock, settings.upload)
        batches = BatchService(store, clock, settings.window, on_change=engine.wake, quota=settings.quota,
                               cost=cost, calendar=calendar)
        keys = KeyService(store, clock)
        webhooks = WebhookService(store, clock, settings.webhooks)
        deliverer = WebhookDeliverer(store, store, store if shared else None, clock, settings.webhooks, engine.owner,
                                     settings.engine.step_lease_s)
        message_batches = MessageBatchService(store, blobs, clock, settings.anthropic, settings.quota, engine.wake,
                                              calendar, cost.project_cap_problem)
        if owner is not None and settings.database_url is not None:
            # On a shared store only this data dir's previous engine's leases are known to be dead.
            store.release_leases(owner)
            if store.lease_holder(BATCH_STEPS, clock.now()) == owner:
                store.release_lease(BATCH_STEPS, owner)
        elif alone:
            # No other process is on this data dir's SQLite store: every lease left behind belongs to
            # a dead one, so its requests can run again at once instead of after lease expiry, and a
            # blob no file refers to was being written when a process died. With others running
            # neither is safe: their claims are live, their uploads in flight; leases expire and are
            # taken over instead.
            store.release_leases()
            dead = store.lease_holder(BATCH_STEPS, clock.now())
            if dead is not None:  # the batch steps' lease of a dead process: no need to wait it out
                store.release_lease(BATCH_STEPS, dead)
            engine.sweep_orphan_blobs()
        if data_lock is not None and not exclusive:
            data_lock.share()
    except BaseException:
        if store is not None:
            store.close()
        if data_lock is not None:
            data_lock.release()
        raise
    return Runtime(settings, store, blobs, catalog, files, batches, engine, keys, message_batches, cost, webhooks,
                   deliverer, meter, clock, data_lock, build_intakes(settings, store, files, batches, catalog, clock))
