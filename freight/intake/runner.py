"""Running the configured intakes beside the engine: one consumer task and one pump task each.

Started by ``freight serve`` and ``freight worker`` (``run_intakes``), stopped with the engine. The pump
flushes due batches and publishes finished results; both are store-driven, so any process may do it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from freight.domain.retry import RetryPolicy
from freight.intake.core import Intake
from freight.ports import IntakeMessage

log = logging.getLogger("freight.intake")

#: How often the pump looks for finished results.
PUMP_INTERVAL_S = 0.1
#: How often the flusher asks the policy (a look at the store's pending messages of this intake).
FLUSH_INTERVAL_S = 0.05
#: The longest wait before a failed consumer reconnects (the wait doubles from 1 s).
CONSUME_BACKOFF_MAX_S = 30.0
#: A failed consumer's waits (``step_s``: no give-up, a broker that cannot be reached is tried for ever).
CONSUME_BACKOFF = RetryPolicy(base_delay_s=1.0, max_delay_s=CONSUME_BACKOFF_MAX_S)
#: Results published concurrently (each awaits its broker's confirmation), then recorded together.
PUBLISH_AT_ONCE = 100


#: A result its broker refuses (``Undeliverable``) is tried this often, backing off, then given up.
PUBLISH_RETRY = RetryPolicy(max_attempts=8, base_delay_s=1.0, max_delay_s=60.0)


class Undeliverable(Exception):
    """The broker refused this one result (a Redis key of another type, an AMQP queue that rejects
    publishes), as opposed to failing to be reached: tried again with backoff, then given up."""


class Source(Protocol):
    async def consume(self, intake: Intake, stop: asyncio.Event) -> None:
        """Take messages until ``stop``: ``intake.accept`` each (in a thread), then acknowledge it."""
        ...

    async def publish(self, message: IntakeMessage, line: bytes) -> None:
        """Send one result where the message asked (raises if it could not be sent; ``Undeliverable``
        if the broker refused this result)."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Retry:
    tries: int
    next_at: float


@dataclass
class PublishRetries:
    """Results that failed to publish, by message id: each waits out its backoff, so it never holds back
    the results behind it; an undeliverable one is given up after ``policy.max_attempts`` tries."""

    policy: RetryPolicy = PUBLISH_RETRY
    random: Callable[[], float] = random.random
    waiting: dict[str, _Retry] = field(default_factory=dict)

    def due(self, message: IntakeMessage, now: float) -> bool:
        retry = self.waiting.get(message.message_id)
        return retry is None or now >= retry.next_at

    def failed(self, message: IntakeMessage, now: float) -> int | None:
        """One more failed try: how many so far, or None when it was the last (give up)."""
        tries = self.waiting[message.message_id].tries + 1 if message.message_id in self.waiting else 1
        decision = self.policy.decide(tries, self.random)
        if decision is None:
            self.waiting.pop(message.message_id, None)
            return None
        self.waiting[message.message_id] = _Retry(tries, now + decision.delay_s)
        return tries

    def sent(self, message: IntakeMessage) -> None:
        self.waiting.pop(message.message_id, None)


async def pump_once(intake: Intake, source: Source, *, flush: bool = True,
                    retries: PublishRetries | None = None) -> int:
    """Flush what is due (unless the flusher does), then deliver what is ready: publish each, then
    record it. A result that fails waits out its backoff (``retries``) while the others go on; one its
    broker refuses (``Undeliverable``) is given up after ``PUBLISH_RETRY.max_attempts`` tries: logged
    (``intake_undeliverable``) and recorded as delivered. How many delivered."""
    retries = retries if retries is not None else PublishRetries()
    if flush:
        await asyncio.to_thread(intake.try_flush)
    now = intake.clock.now()
    ready = [(m, line) for m, line in await asyncio.to_thread(intake.ready) if retries.due(m, now)]
    sent: list[IntakeMessage] = []
    given_up: list[tuple[IntakeMessage, Undeliverable]] = []
    refused: list[tuple[IntakeMessage, Undeliverable]] = []
    failed: BaseException | None = None
    for start in range(0, len(ready), PUBLISH_AT_ONCE):
        chunk = ready[start:start + PUBLISH_AT_ONCE]
        outcomes = await asyncio.gather(*(source.publish(m, line) for m, line in chunk), return_exceptions=True)
        for (message, _), outcome in zip(chunk, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                retries.sent(message)
                sent.append(message)
            elif isinstance(outcome, Undeliverable):
                tries = retries.failed(message, now)
                if tries is None:
                    given_up.append((message, outcome))
                elif tries == 1:  # (said once, when it starts)
                    refused.append((message, outcome))
            else:
                retries.failed(message, now)
                failed = outcome
        if failed is not None:
            break  # (the broker itself failed: the next pass tries again)
    if refused:
        message, exc = refused[0]
        log.warning("intake %s: the broker refused %d result(s); each is tried again, backing off (first: "
                    "message %s: %s)", intake.name, len(refused), message.message_id, exc,
                    extra={"event": "intake_publish_refused", "intake": intake.name})
    if given_up:
        message, exc = given_up[0]
        log.warning("intake %s: gave up publishing %d result(s) after %d tries; they are recorded as delivered "
                    "and not sent (first: message %s to %r: %s)", intake.name, len(given_up),
                    retries.policy.max_attempts, message.message_id, message.reply_to, exc,
                    extra={"event": "intake_undeliverable", "intake": intake.name,
                           "message_ids": [m.message_id for m, _ in given_up]})
    if sent or given_up:
        await asyncio.to_thread(intake.delivered, sent + [m for m, _ in given_up])
    if failed is not None:
        raise failed
    return len(sent)


async def _pump(intake: Intake, source: Source, stop: asyncio.Event) -> None:
    retries = PublishRetries()
    while not stop.is_set():
        try:
            await pump_once(intake, source, flush=False, retries=retries)  # _flusher flushes
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
    """Consume until ``stop``; a consumer that fails (a broker that cannot be reached) reconnects after a
    backoff that doubles to ``CONSUME_BACKOFF_MAX_S``. One warning per streak of failures (the traceback and
    each failure at debug); a consumer that ran that long before failing starts a new streak."""
    loop = asyncio.get_running_loop()
    failures = 0
    while not stop.is_set():
        started = loop.time()
        try:
            await source.consume(intake, stop)
        except Exception as exc:
            if loop.time() - started >= CONSUME_BACKOFF_MAX_S:
                failures = 0  # (it had been consuming: a new streak)
            failures += 1
            delay = CONSUME_BACKOFF.step_s(failures)
            if failures == 1:
                log.warning("intake %s: consumer failed (%s: %s); reconnecting, backing off up to %.0f s",
                            intake.name, type(exc).__name__, exc, CONSUME_BACKOFF_MAX_S,
                            extra={"event": "intake_consume_failed", "intake": intake.name})
            log.debug("intake %s: consumer failure %d; next try in %.0f s", intake.name, failures, delay,
                      exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), delay)
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
