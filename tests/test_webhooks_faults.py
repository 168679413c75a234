"""The deliverer against receivers on loopback that misbehave: no one delivery stops, starves or
hot-loops the others (a real SQLite store, real HTTP)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

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
