"""An optional port: a store shared by several processes that can tell one of them that another
may have made work for it (PostgreSQL: LISTEN/NOTIFY). Only a hint: every process still polls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class WorkHints(Protocol):
    def listen_for_work(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from another thread) after another process made or changed a batch, until
        the store is closed. A lost hint costs at most a poll interval."""
        ...
