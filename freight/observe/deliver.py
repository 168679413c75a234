"""Webhook deliveries: a subscriber of the batch events outbox, run beside the engine.

The process holding the ``webhooks`` lease (one at a time on a shared store) turns new events into
delivery rows (``plan_deliveries``), then sends the due ones, each signed as Standard Webhooks with
the event's id as ``webhook-id`` (the same on every attempt: receivers deduplicate on it). A 2xx
answer is delivered; anything else (or no answer) is tried again with exponential backoff until
``WebhookPolicy.retry_for_s`` after the event. Rows are the only state: a process killed at any
point leaves the delivery pending, and the next holder sends it (at least once).

One delivery can never stop or hot-loop the others: an attempt is bounded as a whole by
``WebhookPolicy.timeout_s`` (connect, send, and the whole answer), anything one attempt raises is a
failed attempt (recorded, backed off, given up in time), and a delivery whose outcome could not be
recorded waits before it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from freight.domain import ids
from freight.domain.clock import Clock
from freight.domain.webhooks import Delivery, WebhookEndpoint, WebhookPolicy, check_url, event_payload, signed_headers
from freight.engine.step_lease import StepHolder
from freight.ports import EventStore, StepLeases, WebhookStore

if TYPE_CHECKING:
    import httpx  # (imported where it is used: `freight run` sends no webhooks, and it takes ~0.05 s)

log = logging.getLogger("freight.webhooks")

#: The lease whose holder sends webhook deliveries.
WEBHOOKS_LEASE = "webhooks"


class WebhookDeliverer:
    def __init__(self, store: EventStore, webhooks: WebhookStore, leases: StepLeases | None, clock: Clock,
                 policy: WebhookPolicy, owner: str, lease_s: float, *, concurrency: int = 8):
        self.events = store
        self.store = webhooks
        self.clock = clock
        self.policy = policy
        self.holder = StepHolder(leases, owner, clock, lease_s, name=WEBHOOKS_LEASE)
        self._sem = asyncio.Semaphore(concurrency)
        #: Deliveries being attempted, by seq: each on its own task, so that a slow receiver holds up
        #: neither the planning nor the other receivers' deliveries.
        self._inflight: dict[int, asyncio.Task[None]] = {}
        #: Deliveries whose outcome could not be recorded (the store failed), by seq: (how many times in a
        #: row, not before when). Their rows still say due; this keeps them from being sent every poll.
        self._held: dict[int, tuple[int, float]] = {}
        self._planned_upto = -1
        self.delivered = 0
        self.failed_attempts = 0

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.policy.timeout_s, follow_redirects=False) as client:
            try:
                while not stop.is_set():
                    try:
                        if await self.holder.held():
                            await self.step(client, wait=False)
                    except Exception:
                        log.warning("webhook step failed; will try again", exc_info=True,
                                    extra={"event": "webhook_step_failed"})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.policy.poll_interval_s)
            finally:
                # (an attempt cut short stays pending: the next holder sends it, at least once)
                for task in list(self._inflight.values()):
                    task.cancel()
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
                await self.holder.release()

    async def step(self, client: httpx.AsyncClient, *, wait: bool = True) -> int:
        """Plan new events and start sending what is due (not already being sent); how many attempts were
        started. ``wait``: until they end (else they run on, each on its own task)."""
        last = await asyncio.to_thread(self.events.last_event_seq)
        if last != self._planned_upto:  # a read first: no write transaction on an idle store
            while await asyncio.to_thread(self.store.plan_deliveries, self.clock.now(), 500):
                pass
            self._planned_upto = last
        now = self.clock.now()
        due = await asyncio.to_thread(self.store.due_deliveries, now, 64 + len(self._inflight) + len(self._held))
        started = []
        for d in due:
            if d.seq in self._inflight or self._held.get(d.seq, (0, now))[1] > now:
                continue
            task = asyncio.create_task(self._attempt(client, d))
            self._inflight[d.seq] = task
            task.add_done_callback(functools.partial(self._ended, d.seq))
            started.append(task)
        if wait:
            await asyncio.gather(*started)
        return len(started)

    def _ended(self, seq: int, task: asyncio.Task[None]) -> None:
        self._inflight.pop(seq, None)
        if not task.cancelled() and (exc := task.exception()) is not None:  # (the store, recording the outcome)
            times = self._held.get(seq, (0, 0.0))[0] + 1
            delay = self.policy.delay_s(times)
            self._held[seq] = (times, self.clock.now() + delay)
            log.warning("webhook delivery attempt not recorded (%s: %s); not sent again for %.0f s",
                        type(exc).__name__, exc, delay, extra={"event": "webhook_step_failed"})

    async def _attempt(self, client: httpx.AsyncClient, d: Delivery) -> None:
        async with self._sem:
            status: int | None = None
            error: str | None
            why: str | None
            try:
                event_type = d.event.webhook_type or ""  # (only terminal statuses are planned: never "")
                why = check_url(d.endpoint.url, self.policy.allow_http) if event_type else \
                    f"a {d.event.new_status!r} event sends no webhook"
                if why is not None:
                    error = f"not sent: {why}"
                else:
                    status, error = await send(client, d.endpoint, d.event.id, event_type, d.event.at,
                                               d.event.batch_id, self.clock.now(), self.policy.timeout_s)
            except Exception as exc:  # (send answers for its own; anything else is a failed attempt too)
                why, error = None, _failure(exc)
            now = self.clock.now()
            ok = status is not None and 200 <= status < 300
            next_at = None if ok or why is not None else self.policy.next_attempt(d.attempts + 1, d.event.at, now)
            extra = {"event": "webhook_delivery", "webhook_id": d.event.id, "batch_id": d.event.batch_id,
                     "endpoint_id": d.endpoint.id, "status_code": status, "attempt": d.attempts + 1}
            if ok:
                self.delivered += 1
                log.info("webhook %s delivered to %s", d.event.id, d.endpoint.id, extra=extra)
            elif next_at is None:
                log.error("webhook %s to %s given up after %d attempts: %s", d.event.id, d.endpoint.id,
                          d.attempts + 1, error, extra=extra)
            else:
                self.failed_attempts += 1
                log.warning("webhook %s to %s failed (%s); next attempt in %.0f s", d.event.id, d.endpoint.id, error,
                            next_at - now, extra=extra)
            await asyncio.to_thread(self.store.delivery_attempted, d.seq, status, error, next_at, now)
            self._held.pop(d.seq, None)


def _failure(exc: BaseException) -> str:
    """What an attempt that raised records: printable (no NUL, no lone surrogate: both stores keep it) and short."""
    text = f"{type(exc).__name__}: {exc}"
    return "".join(c if c.isprintable() else "?" for c in text)[:500]


async def send(client: httpx.AsyncClient, endpoint: WebhookEndpoint, event_id: str, event_type: str, created_at: int,
               batch_id: str, now: float, timeout_s: float) -> tuple[int | None, str | None]:
    """POST one signed event: (the HTTP status, None) or (None, why there was no answer). Nothing it
    raises escapes (an unusable URL, a secret that cannot sign: a failed attempt like no answer).

    ``timeout_s`` bounds the whole attempt, the answer's body included: httpx's own timeout is per
    read, so a receiver that trickles its answer a byte at a time would hold the attempt (and one of
    the deliverer's concurrent sends) for as long as it liked."""
    try:
        body = event_payload(event_id, event_type, created_at, batch_id)
        headers = {**signed_headers(endpoint, event_id, body, now), "user-agent": "freight-webhooks"}
        async with asyncio.timeout(timeout_s):
            response = await client.post(endpoint.url, content=body, headers=headers)
    except TimeoutError:
        return None, f"timed out: no whole answer within {timeout_s:g} s"
    except Exception as exc:
        return None, _failure(exc)
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


async def send_test(endpoint: WebhookEndpoint, event_type: str, clock: Clock,
                    policy: WebhookPolicy) -> tuple[int | None, str | None]:
    """``POST /v1/webhook_endpoints/{id}/test``: a sample event (a made-up batch id), sent once, as
    ``send`` answers (not sent to a URL deliveries may not go to)."""
    import httpx

    why = check_url(endpoint.url, policy.allow_http)
    if why is not None:
        return None, f"not sent: {why}"
    now = clock.now()
    async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False) as client:
        return await send(client, endpoint, ids.new_event_id(), event_type, int(now), ids.new_batch_id(), now,
                          policy.timeout_s)
