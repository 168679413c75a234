"""``ResultCache``: answers kept by their request's canonical key (freight/domain/cache_key.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

#: The project whose requests are being run (None: no project). The engine sets it around each chunk and
#: the real-time routes around each call; the result cache keys its entries by it under
#: ``[cache] scope = "project"``, so that no project learns what another one asked.
answering_for: ContextVar[str | None] = ContextVar("freight_answering_for", default=None)


@contextlib.contextmanager
def on_behalf_of(project: str | None) -> Iterator[None]:
    """Run the requests inside for ``project`` (see ``answering_for``)."""
    token = answering_for.set(project)
    try:
        yield
    finally:
        answering_for.reset(token)


@dataclass(frozen=True)
class CachedAnswer:
    """A 2xx response as its backend gave it, and the tokens it took then."""

    status_code: int
    body: bytes
    input_tokens: int = 0
    output_tokens: int = 0


class ResultCache(Protocol):
    """Shared by every process on the store. ``put_cached`` replaces an entry under the same key
    (two processes answering one request both store it; the later one wins, both are correct)."""

    def get_cached(self, keys: Sequence[str], now: float) -> dict[str, CachedAnswer]:
        """The entries under ``keys`` that have not expired by ``now`` (one query for all)."""
        ...

    def put_cached(self, entries: Mapping[str, CachedAnswer], now: float, expires_at: float) -> None:
        """Store ``entries`` (key -> answer), all stored at ``now`` and expiring at ``expires_at``, in one write."""
        ...

    def evict_cache(self, now: float, max_bytes: int | None) -> int:
        """Drop expired entries, then the oldest until the bodies total at most ``max_bytes``; how many went."""
        ...
