"""The deliverer on a fixed clock against a real SQLite store and a mocked HTTP transport: what it
sends, when it tries again, when it gives up (no sleeping, no sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from freight.domain.batches import Batch, BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.webhooks import WebhookEndpoint, WebhookPolicy, new_secret
from freight.observe.deliver import WebhookDeliverer
from freight.store.sqlite import SqliteStore

BATCH = "batch_" + "a" * 24


def setup(tmp_path: Path, url: str = "https://hooks.example/x") -> tuple[SqliteStore, FixedClock, str]:
    clock = FixedClock(1_800_000_000.0)
    store = SqliteStore(tmp_path / "t.db", synchronous="OFF")
    secret = new_secret()
    at = int(clock.now())
    store.insert_webhook_endpoint(WebhookEndpoint("we_" + "1" * 24, "p", "n", url, ("batch.failed",), secret, at, at))
    store.insert_batch(Batch(id=BATCH, project="p", endpoint="/v1/embeddings", input_file_id="file-" + "0" * 24,
                             completion_window="24h", status=BatchStatus.VALIDATING, created_at=at,
                             expires_at=at + 60), None)
    assert store.set_status(BATCH, [BatchStatus.VALIDATING], BatchStatus.FAILED, at) is not None
    return store, clock, secret


def step(deliverer: WebhookDeliverer, handler: httpx.MockTransport) -> int:
    async def go() -> int:
        async with httpx.AsyncClient(transport=handler) as client:
            return await deliverer.step(client)
    return asyncio.run(go())


def test_retries_back_off_on_the_clock_and_give_up_after_retry_for(tmp_path: Path) -> None:
    store, clock, secret = setup(tmp_path)
    policy = WebhookPolicy(retry_for_s=100, base_delay_s=10, max_delay_s=40)
    deliverer = WebhookDeliverer(store, store, None, clock, policy, "me", 15)
    sent: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503)

    transport = httpx.MockTransport(fail)
    assert step(deliverer, transport) == 1
    assert step(deliverer, transport) == 0, "not due before its backoff"
    waits = []
    for _ in range(4):
        before = clock.now()
        while step(deliverer, transport) == 0 and clock.now() - before < 1000:
            clock.advance(1)
        waits.append(round(clock.now() - before))
    assert waits == [10, 20, 40, 1000], "10, 20, 40 s; the next would be past retry_for: given up"
    assert store.delivery_states("we_" + "1" * 24)[0][1:] == ("failed", 4)
    assert len(sent) == 4 and len({r.headers["webhook-id"] for r in sent}) == 1
    body = json.loads(sent[0].content)
    assert (body["type"], body["data"]["id"]) == ("batch.failed", BATCH)
    store.close()


def test_a_2xx_is_delivered_once_and_signed_for_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, clock, secret = setup(tmp_path)
    deliverer = WebhookDeliverer(store, store, None, clock, WebhookPolicy(), "me", 15)
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(204))
    assert step(deliverer, transport) == 1 and step(deliverer, transport) == 0
    clock.advance(10**6)
    assert step(deliverer, transport) == 0, "delivered: never sent again"
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.0)  # the SDK checks the timestamp's age
    event = OpenAI(api_key="x", base_url="http://127.0.0.1:9").webhooks.unwrap(
        sent[0].content, dict(sent[0].headers), secret=secret)
    assert event.type == "batch.failed" and event.data.id == BATCH
    store.close()


def test_plain_http_to_another_host_is_given_up_without_sending(tmp_path: Path) -> None:
    store, clock, _ = setup(tmp_path, url="http://hooks.example/x")
    deliverer = WebhookDeliverer(store, store, None, clock, WebhookPolicy(), "me", 15)
    sent: list[httpx.Request] = []
    assert step(deliverer, httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))) == 1
    assert sent == [] and store.delivery_states("we_" + "1" * 24)[0][1] == "failed"
    store.close()


def test_a_slow_receiver_holds_up_no_other_delivery(tmp_path: Path) -> None:
    """Found by an audit: each step awaited every attempt it started, so one receiver that took its whole
    timeout delayed every other endpoint's delivery (7 s), and its own retries. Each attempt now runs on
    its own task: a step starts what is due and returns; a delivery already being sent is not sent twice."""
    store, clock, _ = setup(tmp_path, "https://slow.example/x")
    at = int(clock.now())
    store.insert_webhook_endpoint(WebhookEndpoint("we_" + "2" * 24, "p", "n", "https://fast.example/x",
                                                  ("batch.failed",), new_secret(), at, at))
    deliverer = WebhookDeliverer(store, store, None, clock, WebhookPolicy(), "me", 15)
    slow_may_answer = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow.example":
            await slow_may_answer.wait()
        return httpx.Response(200)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            assert await deliverer.step(client, wait=False) == 2
            for _ in range(200):
                if store.delivery_states("we_" + "2" * 24)[0][1] == "delivered":
                    break
                await asyncio.sleep(0.01)
            assert store.delivery_states("we_" + "2" * 24)[0][1] == "delivered", "the fast one is not held up"
            assert store.delivery_states("we_" + "1" * 24)[0][1] == "pending"
            assert await deliverer.step(client, wait=False) == 0, "the slow one is in flight: not sent again"
            slow_may_answer.set()
            await asyncio.gather(*deliverer._inflight.values())
        assert store.delivery_states("we_" + "1" * 24)[0][1] == "delivered"

    asyncio.run(go())
    store.close()
