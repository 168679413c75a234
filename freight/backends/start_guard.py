"""A backend whose model cannot load ends its requests instead of holding their batches for ever.

The engine loads a backend before it claims anything, and when that fails it tries again, backing off.
A model that can never load (a ``model_path`` that does not exist or is not a GGUF file, weights Ray
cannot read) would keep its batches ``in_progress`` for ever that way. ``StartGuard`` lets the first
``MAX_FAILURES - 1`` failed starts through (the engine retries them), and after that lets the start
succeed: every ``execute`` then answers ``Failure("model_unavailable", why)`` for each request (retried
by the engine like any failure, so each request ends with that error line once its attempts run out),
while a real start is tried again at most every ``RETRY_S`` (a file that appears later is picked up).
A model placed on Ray does the same per replica (freight/backends/ray/pool.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from freight.domain.requests import MODEL_UNAVAILABLE, Failure, Result
from freight.ports import Backend, ModelInfo

log = logging.getLogger("freight.engine")

#: Failed starts in a row after which the model's requests fail instead of waiting.
MAX_FAILURES = 5
#: How often a real start is tried again while the model is unavailable.
RETRY_S = 60.0


class StartGuard:
    def __init__(self, inner: Backend, *, max_failures: int = MAX_FAILURES, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self.max_failures = max_failures
        self.retry_s = retry_s
        self._clock = clock
        self.chunk_size = inner.chunk_size
        self.max_concurrency = inner.max_concurrency
        self.failures = 0
        #: Why the model is unavailable (None while it is not known to be).
        self.why: str | None = None
        self._next_try = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def models(self) -> Sequence[ModelInfo]:
        return self.inner.models()

    async def start(self) -> None:
        try:
            await self.inner.start()
        except Exception as exc:
            self.failures += 1
            if self.failures < self.max_failures:
                raise
            why = f"The model could not be loaded: {type(exc).__name__}: {exc}"
            if self.why is None:
                names = ", ".join(m.id for m in self.inner.models())
                log.error("model %s cannot be loaded (%d tries): its requests fail with %s until it can; %s",
                          names, self.failures, MODEL_UNAVAILABLE, why, extra={"event": "model_unavailable"})
            self.why = why
            self._next_try = self._clock() + self.retry_s
            return
        if self.why is not None:
            log.info("model %s loaded after all", ", ".join(m.id for m in self.inner.models()),
                     extra={"event": "model_available"})
        self.failures, self.why = 0, None

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if self.why is not None and self._clock() >= self._next_try:
            await self.start()  # (sets the next try again if it fails)
        if self.why is not None:
            return [Failure(MODEL_UNAVAILABLE, self.why)] * len(bodies)
        return list(await self.inner.execute(endpoint, bodies))

    async def close(self) -> None:
        await self.inner.close()
