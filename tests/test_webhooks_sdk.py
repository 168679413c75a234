"""Webhooks through the official openai SDK: ``client.webhooks.*`` manage the endpoints, and a
receiver on loopback verifies every delivery with ``client.webhooks.unwrap`` (Standard Webhooks
signature, OpenAI's event payload). Deliveries are durable: kill -9 after the status change and
before the delivery, restart, and the webhook still arrives with the event's id."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI
from servers import (
    SCRIPTED_SLOW,
    TERMINAL,
    FreightServer,
    config_text,
    free_port,
    jsonl_bytes,
    postgres_database,
    request_line,
    wait_for,
)
from webhook_receiver import Receiver, receiving

WEBHOOKS = """
[webhooks]
retry_base_delay_s = 0.2
retry_max_delay_s = 0.5
poll_interval_s = 0.1
"""


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text(extra=WEBHOOKS))


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    yield c
    c.close()


def run_batch(client: OpenAI, n: int = 3, cancel: bool = False) -> str:
    f = client.files.create(file=("in.jsonl", jsonl_bytes([request_line(f"r{i}", model=SCRIPTED_SLOW,
                                                                          sleep_s=0.3 if cancel else 0)
                                                             for i in range(n)])), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    if cancel:
        client.batches.cancel(b.id)
    wait_for(lambda: client.batches.retrieve(b.id).status in TERMINAL, 30, "the batch to end")
    return b.id


def unwrapped(client: OpenAI, receiver: Receiver, secret: str) -> list[tuple[str, Any]]:
    """(webhook-id, the event) of every delivery, each verified by the SDK."""
    with receiver.lock:
        got = list(receiver.received)
    return [(r.headers["webhook-id"], client.webhooks.unwrap(r.body, r.headers, secret=secret)) for r in got]


def test_the_sdk_manages_webhook_endpoints(client: OpenAI) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    made = client.webhooks.create(name="mine", url=url, event_types=["batch.completed"])
    assert made.id.startswith("we_") and made.signing_secret.startswith("whsec_") and made.object == "webhook_endpoint"
    assert made.signing_secret_hint and made.signing_secret_hint.endswith(made.signing_secret[-4:])
    got = client.webhooks.retrieve(made.id)
    assert (got.name, got.url, got.event_types, got.created_at) == ("mine", url, ["batch.completed"], made.created_at)
    assert not hasattr(got, "signing_secret") or "signing_secret" not in got.model_dump(exclude_unset=True)
    changed = client.webhooks.update(made.id, name="renamed", event_types=["batch.failed", "batch.expired"])
    assert (changed.name, changed.event_types, changed.url) == ("renamed", ["batch.failed", "batch.expired"], url)
    second = client.webhooks.create(name="two", url=url, event_types=["batch.cancelled"])
    listed = client.webhooks.list(limit=1)
    assert [e.id for e in listed.data] == [second.id] and listed.has_more
    assert [e.id for e in client.webhooks.list()] == [second.id, made.id], "every page, newest first"
    rotated = client.webhooks.rotate_secret(made.id)
    assert rotated.signing_secret != made.signing_secret
    assert client.webhooks.event_types.list().data == ["batch.completed", "batch.failed", "batch.expired",
                                                       "batch.cancelled"]
    deleted = client.webhooks.delete(second.id)
    assert deleted.deleted and deleted.id == second.id
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.webhooks.delete("we_nope")


def test_bad_endpoints_are_400s_in_openai_shape(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.webhooks.create(name="x", url="http://example.com/hook", event_types=["batch.completed"])
    assert err.value.code == "invalid_url" and "https" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.webhooks.create(name="x", url="https://example.com/hook",
                               event_types=["response.completed"])  # a real OpenAI event freight does not send
    assert err.value.param == "event_types"
    with pytest.raises(openai.BadRequestError):
        client.webhooks.create(name="", url="https://example.com/hook", event_types=["batch.completed"])


def test_a_url_no_delivery_could_use_is_a_400_and_test_never_a_500(client: OpenAI) -> None:
    """Found by an audit: a non-numeric port was accepted (200), then /test answered 500 and every delivery
    raised before its attempt was recorded. Such a URL is now a 400; and a URL httpx still refuses at send
    time (a host that is not valid IDNA) makes /test answer as for any failed attempt."""
    with pytest.raises(openai.BadRequestError) as err:
        client.webhooks.create(name="x", url="https://example.com:abc/h", event_types=["batch.completed"])
    assert (err.value.code, err.value.param) == ("invalid_url", "url") and "port" in err.value.message
    made = client.webhooks.create(name="x", url="https://xn--zz.example/h", event_types=["batch.completed"])
    with pytest.raises(openai.BadRequestError) as err:
        client.webhooks.test(made.id, event_type="batch.completed")
    assert err.value.code == "webhook_unreachable" and "IDNAError" in err.value.message
    client.webhooks.delete(made.id)


def test_test_sends_a_signed_sample_the_sdk_unwraps(client: OpenAI) -> None:
    with receiving(Receiver(free_port())) as receiver:
        made = client.webhooks.create(name="t", url=receiver.url, event_types=["batch.completed"])
        result = client.webhooks.test(made.id, event_type="batch.failed")
        assert (result.status_code, result.success, result.event_type) == (200, True, "batch.failed")
        [(webhook_id, event)] = unwrapped(client, receiver, made.signing_secret)
        assert event.type == "batch.failed" and event.id == webhook_id and event.data.id.startswith("batch_")
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(receiver.received[0].body, receiver.received[0].headers,
                                   secret=client.webhooks.rotate_secret(made.id).signing_secret)
    client.webhooks.delete(made.id)


def test_batch_webhooks_arrive_signed_and_are_retried_with_the_same_id(client: OpenAI) -> None:
    with receiving(Receiver(free_port(), statuses=[500])) as receiver:  # the first attempt fails
        made = client.webhooks.create(name="b", url=receiver.url, event_types=["batch.completed", "batch.cancelled"])
        done = run_batch(client)
        cancelled = run_batch(client, n=40, cancel=True)
        assert client.batches.retrieve(cancelled).status == "cancelled"
        wait_for(lambda: len(receiver.received) >= 3, 30, "both webhooks, one of them twice (after the 500)")
        events = unwrapped(client, receiver, made.signing_secret)
        kinds = {e.data.id: e.type for _, e in events}
        assert kinds == {done: "batch.completed", cancelled: "batch.cancelled"}
        by_batch: dict[str, set[str]] = {}
        for webhook_id, e in events:
            assert e.id == webhook_id and e.object == "event" and e.created_at > 0
            by_batch.setdefault(e.data.id, set()).add(webhook_id)
        assert all(len(v) == 1 for v in by_batch.values()), "one id per event, across retries"
    client.webhooks.delete(made.id)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_webhook_survives_kill_9_between_the_status_change_and_its_delivery(
        make_server: Callable[..., FreightServer], store: str) -> None:
    with contextlib.ExitStack() as stack:
        extra = WEBHOOKS
        url = None
        if store == "postgres":
            from freight.store.postgres.migrate import migrate

            url = stack.enter_context(postgres_database("freight_webhooks"))
            migrate(url)
            extra += f'\n[server]\ndatabase_url = "{url}"\n'
        server = make_server(config_text(extra=extra))
        client = server.client()
        port = free_port()  # nothing listens yet: every attempt before the kill fails
        made = client.webhooks.create(name="k", url=f"http://127.0.0.1:{port}/hook", event_types=["batch.completed"])
        batch_id = run_batch(client)

        def attempts() -> int:
            sql = "SELECT max(attempts) FROM webhook_deliveries WHERE state = 0"
            if url is None:
                with contextlib.closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)) as c:
                    row = c.execute(sql).fetchone()
            else:
                import psycopg

                with psycopg.connect(url, autocommit=True) as pc:
                    row = pc.execute(sql).fetchone()
            return int(row[0] or 0) if row else 0

        wait_for(lambda: attempts() >= 1, 30, "a failed attempt before the kill")
        server.kill()
        with receiving(Receiver(port)) as receiver:
            server.start()
            wait_for(lambda: receiver.received, 30, "the delivery after the restart")
            time.sleep(0.5)
            events = unwrapped(client, receiver, made.signing_secret)
        server.stop()
        client.close()
    assert {e.data.id for _, e in events} == {batch_id} and {e.type for _, e in events} == {"batch.completed"}
    assert len({webhook_id for webhook_id, _ in events}) == 1, "at least once, always with the same webhook-id"
