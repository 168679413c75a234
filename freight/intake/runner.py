"""Running the configured intakes beside the engine: one consumer task and one pump task each.

Started by ``freight serve`` and ``freight worker`` (``run_intakes``), stopped with the engine. The pump
flushes due batches and publishes finished results; both are store-driven, so any process may do it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from freight.intake.core import Intake
from freight.ports import IntakeMessage

log = logging.getLogger("freight.intake")

#: How often the pump looks for finished results.
PUMP_INTERVAL_S = 0.1
#: How often the flusher asks the policy (a look at the store's pending messages of this intake).
FLUSH_INTERVAL_S = 0.05
#: Results published concurrently (each awaits its broker's confirmation), then recorded together.
PUBLISH_AT_ONCE = 100


class Source(Protocol):
    async def consume(self, intake: Intake, stop: asyncio.Event) -> None:
        """Take messages until ``stop``: ``intake.accept`` each (in a thread), then acknowledge it."""
        ...

    async def publish(self, message: IntakeMessage, line: bytes) -> None:
        """Send one result where the message asked (raises if it could not be sent)."""
        ...

    async def close(self) -> None: ...


async def pump_once(intake: Intake, source: Source, *, flush: bool = True) -> int:
    """Flush what is due (unless the flusher does), then deliver what is ready: publish each, then
    record it. How many delivered."""
    if flush:
        await asyncio.to_thread(intake.try_flush)
    ready = await asyncio.to_thread(intake.ready)
    sent: list[IntakeMessage] = []
    failed: BaseException | None = None
    for start in range(0, len(ready), PUBLISH_AT_ONCE):
        chunk = ready[start:start + PUBLISH_AT_ONCE]
        outcomes = await asyncio.gather(*(source.publish(m, line) for m, line in chunk), return_exceptions=True)
        for (message, _), outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed = outcome
            else:
                sent.append(message)
        if failed is not None:
            break
    if sent:
        await asyncio.to_thread(intake.delivered, sent)
    if failed is not None:
        raise failed
    return len(sent)


async def _pump(intake: Intake, source: Source, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await pump_once(intake, source, flush=False)  # _flusher flushes
        except Exception:  # a broker or store hiccup: the next pass retries from the store
            log.exception("intake %s: pump failed; retrying", intake.name)
            await asyncio.sleep(1)
        try:
            await asyncio.wait_for(stop.wait(), PUMP_INTERVAL_S)
        except TimeoutError:
            pass


async def _flusher(intake: Intake, stop: asyncio.Event) -> None:
    """Flush what the policy says is due every ``FLUSH_INTERVAL_S``, whatever the pump is doing: a pump
    busy publishing results would otherwise hold a due flush back (the p99 of the policy's wait went
    past ``flush_age_s`` under load: docs/benchmarks.md#queue-intake)."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(intake.try_flush)
        except Exception:
            log.exception("intake %s: flush failed; retrying", intake.name)
        try:
            await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
        except TimeoutError:
            pass


async def _consume(intake: Intake, source: Source, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await source.consume(intake, stop)
        except Exception:
            log.exception("intake %s: consumer failed; reconnecting", intake.name)
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except TimeoutError:
                pass


async def run_intakes(pairs: Sequence[tuple[Intake, Source]], stop: asyncio.Event) -> None:
    """Run every intake until ``stop``."""
    tasks = []
    for intake, source in pairs:
        tasks.append(asyncio.create_task(_consume(intake, source, stop), name=f"intake-{intake.name}-consume"))
        tasks.append(asyncio.create_task(_pump(intake, source, stop), name=f"intake-{intake.name}-pump"))
        tasks.append(asyncio.create_task(_flusher(intake, stop), name=f"intake-{intake.name}-flush"))
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        for _, source in pairs:
            await source.close()
