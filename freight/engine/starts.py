"""Backend starts (model loads), one per backend, shared by whoever needs the backend first.

A backend starts when its first work arrives (the engine's dispatcher) or earlier, when an ingest
reads the batch's model (``warm``): then the model loads while the rest of the file is validated and
stored, rather than after. Call everything here on the engine's loop.
"""

from __future__ import annotations

import asyncio
import logging

from freight.ports import Backend
from freight.services.catalog import ModelCatalog

log = logging.getLogger("freight.engine")


class BackendStarts:
    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closed = False

    def warm(self, model: str) -> None:
        """Start loading ``model``'s backend now, ahead of its first chunk."""
        backend = self.catalog.backend_for(model)
        if backend is not None and not self._closed:
            self.start(backend)

    def start(self, backend: Backend) -> asyncio.Task[None]:
        """The backend's start: the one under way, or a new one when none is or the last one failed."""
        task = self._tasks.get(id(backend))
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._tasks[id(backend)] = asyncio.ensure_future(backend.start())
            task.add_done_callback(_retrieved)  # a warm start nobody awaits must not fail unseen
        return task

    def reopen(self) -> None:
        self._closed = False

    async def close(self) -> None:
        """Cancel the starts under way (the backends close with the catalog)."""
        self._closed = True
        running = [task for task in self._tasks.values() if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks.clear()


def _retrieved(task: asyncio.Task[None]) -> None:
    # Retrieved, so never "exception was never retrieved"; logged at debug only: the dispatcher, which
    # starts the backend again before it claims anything, says it once at error level.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("backend failed to start: %s: %s", type(exc).__name__, exc, extra={"event": "backend_start_failed"})
