"""Withdrawing requests that wait inside a backend: cancel, expiry (and pause) reach them before they start."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from freight.domain.requests import Failure

#: ``Failure.code`` for a request that a backend did not start because its call was withdrawn.
WITHDRAWN = "withdrawn"
T = TypeVar("T")


class Withdrawn(Exception):
    """Raised by ``Withdrawal.before``: the wait was given up, the request is not to start."""


class Withdrawal:
    """Tells a backend that the requests of one ``execute`` call which have not started should not start.

    Set by the engine when their batch is cancelled or expires (and, later, paused). Requests still
    waiting inside the backend (a queue for a decoding slot, rate-limit admission) then end at once as
    ``Failure(WITHDRAWN, ...)``; the engine puts them back (fenced by their attempt id) and the batch's
    close records them as cancelled or expired. Requests already running may finish. ``set`` is called
    on the event loop; ``is_set`` may be read from any thread; callbacks run where ``set`` runs.
    """

    def __init__(self) -> None:
        self._reason: str | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def reason(self) -> str | None:
        return self._reason

    def is_set(self) -> bool:
        return self._reason is not None

    def set(self, reason: str) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when this is set (at once when it already is)."""
        with self._lock:
            if self._reason is None:
                self._callbacks.append(callback)
                return
        callback()

    def failure(self) -> Failure:
        return Failure(WITHDRAWN, f"not started: the batch was {self._reason or 'withdrawn'}")

    async def before(self, wait: Awaitable[T]) -> T:
        """Await ``wait`` (a queue, a slot, an admission) unless this is set first: then cancel it, raise
        ``Withdrawn``. ``wait`` must be safe to cancel."""
        task = asyncio.ensure_future(wait)
        if self.is_set():
            task.cancel()
            raise Withdrawn(self._reason)
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not gone.done():
                gone.set_result(None)

        def from_anywhere() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(wake)

        self.add_callback(from_anywhere)
        try:
            waiters: list[asyncio.Future[Any]] = [task, gone]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Withdrawn(self._reason)


#: The ``Withdrawal`` of the ``execute`` call being made (set by the engine around each call; None
#: for direct calls such as the synchronous API's). A context variable, so it reaches the tasks and
#: worker threads a backend starts, through wrappers such as the Messages adapter.
current_withdrawal: contextvars.ContextVar[Withdrawal | None] = contextvars.ContextVar(
    "freight_withdrawal", default=None)
