"""The deliverer against receivers on loopback that misbehave, and deliveries that cannot be sent:
no one delivery stops, starves or hot-loops the others (a real SQLite store, real HTTP)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
from servers import free_port
from test_webhooks_deliver import setup
from webhook_receiver import Receiver, receiving

from freight.domain.webhooks import WebhookEndpoint, WebhookPolicy, new_secret
from freight.observe.deliver import WebhookDeliverer
from freight.store.sqlite import SqliteStore

SLOW = "we_" + "1" * 24  # (the endpoint setup makes)


def endpoint(n: int, url: str) -> WebhookEndpoint:
    return WebhookEndpoint(f"we_{n:024d}", "p", "n", url, ("batch.failed",), new_secret(), 1_800_000_000,
                           1_800_000_000)


def last_error(store: SqliteStore, endpoint_id: str) -> str:
    with sqlite3.connect(store.path) as c:  # (a reader beside the store, as an operator would look)
        return str(c.execute("SELECT last_error FROM webhook_deliveries WHERE endpoint_id = ?",
                             (endpoint_id,)).fetchone()[0])


def state(store: SqliteStore, endpoint_id: str) -> tuple[str, int] | None:
    """(state, attempts) of the endpoint's one delivery; None before it is planned."""
    rows = store.delivery_states(endpoint_id)
    return rows[0][1:] if rows else None


async def drain(deliverer: WebhookDeliverer) -> None:
    await asyncio.gather(*deliverer._inflight.values(), return_exceptions=True)


def test_an_attempt_is_bounded_as_a_whole_by_timeout_s(tmp_path: Path) -> None:
    """Found by an audit: httpx's timeout is per read, so a receiver trickling its answer a byte a second
    kept one attempt open 39 s with timeout_s = 2, and 8 of them (the deliverer sends 8 at once) held a
    healthy endpoint's delivery 41 s. Here each of 8 trickling answers would take 30 s: every attempt is cut
    off at timeout_s = 1 (a failed attempt, tried again later) and the healthy endpoint, planned last, gets
    its delivery within seconds."""
    with receiving(Receiver(free_port(), trickle_s=0.5)) as slow, receiving(Receiver(free_port())) as ok:
        store, clock, _ = setup(tmp_path, slow.url)
        slows = [SLOW] + [endpoint(n, slow.url).id for n in range(2, 9)]
        for n in range(2, 9):
            store.insert_webhook_endpoint(endpoint(n, slow.url))
        healthy = endpoint(9, ok.url)
        store.insert_webhook_endpoint(healthy)
        policy = WebhookPolicy(timeout_s=1, poll_interval_s=0.05)
        deliverer = WebhookDeliverer(store, store, None, clock, policy, "me", 15)

        async def go() -> float:
            stop = asyncio.Event()
            running = asyncio.create_task(deliverer.run(stop))
            began = time.monotonic()
            while state(store, healthy.id) != ("delivered", 1) and time.monotonic() - began < 20:
                await asyncio.sleep(0.05)
            took = time.monotonic() - began
            while any(state(store, e) in (None, ("pending", 0)) for e in slows) and time.monotonic() - began < 60:
                await asyncio.sleep(0.05)
            stop.set()
            await running
            return took

        took = asyncio.run(go())
        assert store.delivery_states(healthy.id)[0][1] == "delivered"
        assert took < 8, f"the healthy endpoint waited {took:.1f} s behind 8 trickling ones"
        assert [state(store, e) for e in slows] == [("pending", 1)] * 8, "failed attempts, to be tried again"
        assert last_error(store, SLOW) == "timed out: no whole answer within 1 s"
        assert len(slow.received) == 8
        store.close()


def test_a_stored_url_with_a_bad_port_is_given_up_not_looped(tmp_path: Path) -> None:
    """Found by an audit: such a URL (accepted by the API then) made httpx raise InvalidURL, which is no
    httpx.HTTPError: the attempt escaped unrecorded, and the row stayed pending with 0 attempts, sent again
    every poll for ever. A URL deliveries may not go to is given up at once, as the docs say."""
    store, clock, _ = setup(tmp_path, "https://example.com:abc/h")
    deliverer = WebhookDeliverer(store, store, None, clock, WebhookPolicy(), "me", 15)

    async def go() -> int:
        async with httpx.AsyncClient() as client:
            return await deliverer.step(client)

    assert asyncio.run(go()) == 1
    assert store.delivery_states(SLOW)[0][1:] == ("failed", 1)
    assert "port" in last_error(store, SLOW)
    clock.advance(10**6)
    assert asyncio.run(go()) == 0
    store.close()


def test_whatever_one_attempt_raises_is_a_failed_attempt_backed_off_then_given_up(tmp_path: Path) -> None:
    """httpx refuses to send to a host that is not valid IDNA (a ValueError, no httpx.HTTPError), which
    check_url lets through: like no answer, each such attempt is recorded and tried again on the usual
    schedule, then given up after retry_for, never looping."""
    store, clock, _ = setup(tmp_path, "https://xn--zz.example/h")
    policy = WebhookPolicy(retry_for_s=100, base_delay_s=10, max_delay_s=40)
    deliverer = WebhookDeliverer(store, store, None, clock, policy, "me", 15)

    async def go() -> list[int]:
        waits = []
        async with httpx.AsyncClient() as client:
            assert await deliverer.step(client) == 1
            assert await deliverer.step(client) == 0, "not due before its backoff"
            for _ in range(4):
                before = clock.now()
                while await deliverer.step(client) == 0 and clock.now() - before < 1000:
                    clock.advance(1)
                waits.append(round(clock.now() - before))
        return waits

    assert asyncio.run(go()) == [10, 20, 40, 1000], "10, 20, 40 s; the next would be past retry_for: given up"
    assert store.delivery_states(SLOW)[0][1:] == ("failed", 4)
    assert last_error(store, SLOW).startswith("IDNAError: ")
    store.close()


class FlakyStore(SqliteStore):
    """A store that cannot record the next ``failures`` outcomes (as when the database is locked)."""

    failures = 0

    def delivery_attempted(self, seq: int, status: int | None, error: str | None, next_at: float | None,
                           now: float) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        super().delivery_attempted(seq, status, error, next_at, now)


def test_a_delivery_whose_outcome_was_not_recorded_waits_before_it_is_sent_again(tmp_path: Path) -> None:
    """The row of an outcome the store could not take still says due: it was sent again on every poll
    (each second, for as long as the store failed on it). It now waits as a failed attempt would."""
    with receiving(Receiver(free_port())) as receiver:
        store, clock, _ = setup(tmp_path, receiver.url)
        store.close()
        flaky = FlakyStore(store.path, synchronous="OFF")
        flaky.failures = 2
        deliverer = WebhookDeliverer(flaky, flaky, None, clock, WebhookPolicy(base_delay_s=5), "me", 15)

        async def go() -> list[int]:
            started = []
            async with httpx.AsyncClient() as client:
                for advance in (0, 0, 1, 4, 9, 10):  # (not recorded twice: held 5 s, then 10 s)
                    clock.advance(advance)
                    started.append(await deliverer.step(client, wait=False))
                    await drain(deliverer)
            return started

        assert asyncio.run(go()) == [1, 0, 0, 1, 0, 1]
        assert flaky.delivery_states(SLOW)[0][1:] == ("delivered", 1)
        assert len(receiver.received) == 3 and len({r.headers["webhook-id"] for r in receiver.received}) == 1
        flaky.close()
