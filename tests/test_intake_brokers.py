"""Queue intake end to end with the real brokers (Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672).

N messages are published, ``freight serve`` consumes them and is killed with kill -9 twice while
consuming and flushing, then restarted. What must hold: one result per message (a result delivered
again after a crash is the identical line: same request id, so the request did not run twice), each
at the reply address it asked for (and, for AMQP, with its correlation id); poison messages get error
lines and the rest flow on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import SCRIPTED, FreightServer, config_text, postgres_database, wait_for

#: FREIGHT_INTAKE_N=1000 for the issue's full figure (about twice as long).
N = int(os.environ.get("FREIGHT_INTAKE_N", "200"))
POISON = {"p-json": "invalid_json", "p-nobody": "missing_required_parameter", "p-model": "model_not_found"}


def _body(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"hello {i}"}]}


def _run_with_two_kills(tmp_path: Path, intake_table: str, count: Callable[[], int], total: int,
                        database_url: str | None = None) -> FreightServer:
    config = tmp_path / "freight.toml"
    config.write_text(config_text(extra=intake_table))
    server = FreightServer(tmp_path / "data", config, database_url=database_url).start()
    try:
        wait_for(lambda: count() >= N // 6, 30, "first results")
        server.restart()  # kill -9 while consuming and flushing
        wait_for(lambda: count() >= N // 2, 30, "more results")
        server.restart()
        wait_for(lambda: count() >= total, 40 + N // 20, f"all {total} results")
        time.sleep(0.5)  # anything still in flight would show up as a wrong count below
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.stop()
    return server


def _check(results: dict[str, list[tuple[str, dict[str, Any]]]], expected_to: Callable[[str], str]) -> None:
    """``results``: each message id's deliveries as (where, line)."""
    assert set(results) == {f"m{i}" for i in range(N)} | set(POISON)
    for mid, deliveries in results.items():
        first_to, first = deliveries[0]
        assert all(d == deliveries[0] for d in deliveries), f"{mid}: different results {deliveries}"
        assert first_to == expected_to(mid)
        if mid in POISON:
            assert first["response"] is None and first["error"]["code"] == POISON[mid], first
        else:
            assert first["custom_id"] == f"c-{mid}"
            assert first["response"]["status_code"] == 200 and first["id"].startswith("batch_req_"), first


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_redis_stream_intake_survives_kill_9(tmp_path: Path, store: str) -> None:
    redis = pytest.importorskip("redis")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database("freight_intake")) if store == "postgres" else None
        if url is not None:
            from freight.store.postgres.migrate import migrate

            migrate(url)
        _redis_scenario(tmp_path, redis, url)


def _redis_scenario(tmp_path: Path, redis: Any, database_url: str | None) -> None:
    r = redis.Redis(host="127.0.0.1", port=6379)
    tag = uuid.uuid4().hex[:10]
    stream, replies = f"freight-in-{tag}", [f"freight-out-{tag}-a", f"freight-out-{tag}-b"]
    try:
        for i in range(N):
            r.xadd(stream, {"id": f"m{i}", "custom_id": f"c-m{i}", "body": json.dumps(_body(i)),
                            "reply_to": replies[i % 2]})
            if i == 50:
                r.xadd(stream, {"id": "p-json", "body": "{not json"})
                r.xadd(stream, {"id": "p-nobody", "custom_id": "x"})
                r.xadd(stream, {"id": "p-model", "body": json.dumps({"model": "nope", **_body(0)})})
        table = (f'\n[intake."q"]\nkind = "redis"\nstream = "{stream}"\ngroup = "g"\nmodel = "{SCRIPTED}"\n'
                 f'flush_size = 25\nflush_age_s = 0.3\nresults_stream = "{replies[1]}"\n')

        def read_all() -> dict[str, list[tuple[str, dict[str, Any]]]]:
            out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
            for name in replies:
                for _, fields in r.xrange(name):
                    out.setdefault(fields[b"id"].decode(), []).append((name, json.loads(fields[b"result"])))
            return out

        _run_with_two_kills(tmp_path, table, lambda: len(read_all()), N + len(POISON), database_url)
        # Poison entries name no reply_to: they go to results_stream.
        _check(read_all(), lambda mid: replies[1] if mid in POISON else replies[int(mid[1:]) % 2])
        assert r.xpending(stream, "g")["pending"] == 0  # every entry acknowledged
    finally:
        r.delete(stream, *replies)


def test_amqp_queue_intake_survives_kill_9(tmp_path: Path) -> None:
    pika = pytest.importorskip("aio_pika")
    import asyncio

    tag = uuid.uuid4().hex[:10]
    queue, replies = f"freight-in-{tag}", [f"freight-out-{tag}-a", f"freight-out-{tag}-b"]
    url = "amqp://guest:guest@127.0.0.1:5672/"
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    async def scenario() -> None:
        connection = await pika.connect_robust(url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True)
            reply_queues = [await channel.declare_queue(name, auto_delete=True) for name in replies]
            for name, q in zip(replies, reply_queues, strict=True):
                async def on_result(message: Any, name: str = name) -> None:
                    async with message.process():
                        line = json.loads(message.body)
                        mid = message.correlation_id
                        got.setdefault(mid, []).append((name, line))
                await q.consume(on_result)

            async def send(body: bytes, mid: str, reply_to: str) -> None:
                await channel.default_exchange.publish(
                    pika.Message(body, message_id=mid, correlation_id=mid, reply_to=reply_to), routing_key=queue)

            for i in range(N):
                await send(json.dumps({"custom_id": f"c-m{i}", "body": _body(i)}).encode(), f"m{i}", replies[i % 2])
                if i == 50:
                    await send(b"{not json", "p-json", replies[0])
                    await send(b'{"custom_id": "x"}', "p-nobody", replies[0])
                    await send(json.dumps({"body": {"model": "nope", **_body(0)}}).encode(), "p-model", replies[0])
            table = (f'\n[intake."q"]\nkind = "amqp"\nqueue = "{queue}"\nmodel = "{SCRIPTED}"\n'
                     f'flush_size = 25\nflush_age_s = 0.3\n')
            await asyncio.to_thread(_run_with_two_kills, tmp_path, table, lambda: len(got), N + len(POISON))
            await asyncio.sleep(0.3)
            await channel.queue_delete(queue)

    asyncio.run(scenario())
    _check(got, lambda mid: replies[0] if mid in POISON else replies[int(mid[1:]) % 2])


def test_an_amqp_result_whose_reply_queue_does_not_exist_goes_to_results_stream() -> None:
    """Published mandatory: the broker returns what it cannot route, and the result goes to the intake's
    ``results_stream`` instead of being lost; with no queue at all it is dropped with a warning, not
    retried for ever (which would hold back every result behind it)."""
    pika = pytest.importorskip("aio_pika")
    import asyncio

    from freight.intake.amqp_source import AmqpSource
    from freight.intake.settings import IntakeSettings
    from freight.ports import IntakeMessage

    tag = uuid.uuid4().hex[:10]
    fallback, missing = f"freight-results-{tag}", f"freight-nowhere-{tag}"

    def message(mid: str, reply_to: str | None) -> IntakeMessage:
        return IntakeMessage("q", mid, f"c-{mid}", "/v1/chat/completions", "{}", reply_to, mid, 0.0)

    async def scenario() -> list[tuple[str | None, bytes]]:
        connection = await pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(fallback, auto_delete=True)
            with_fallback = AmqpSource(IntakeSettings("q", "amqp", queue="in", results_stream=fallback))
            without = AmqpSource(IntakeSettings("q", "amqp", queue="in"))
            try:
                await with_fallback.publish(message("m1", missing), b'{"id": 1}')   # to results_stream
                await with_fallback.publish(message("m2", fallback), b'{"id": 2}')  # reply_to exists
                await without.publish(message("m3", missing), b'{"id": 3}')         # nowhere: dropped, no raise
            finally:
                await with_fallback.close()
                await without.close()
            got = []
            for _ in range(2):
                m = await queue.get(timeout=5)
                await m.ack()
                got.append((m.correlation_id, m.body))
            assert await queue.get(fail=False) is None
            return got

    assert asyncio.run(scenario()) == [("m1", b'{"id": 1}'), ("m2", b'{"id": 2}')]


def test_freight_worker_runs_the_intakes_too(tmp_path: Path) -> None:
    import subprocess

    from servers import freight_command, subprocess_env

    redis = pytest.importorskip("redis")
    r = redis.Redis(host="127.0.0.1", port=6379)
    stream = f"freight-in-{uuid.uuid4().hex[:10]}"
    config = tmp_path / "freight.toml"
    config.write_text(config_text(extra=f'\n[intake."w"]\nkind = "redis"\nstream = "{stream}"\n'
                                        f'model = "{SCRIPTED}"\nflush_size = 5\nflush_age_s = 0.2\n'))
    for i in range(12):
        r.xadd(stream, {"id": f"m{i}", "body": json.dumps(_body(i))})
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([*freight_command(), "worker", "--data-dir", str(tmp_path / "data"), "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(),
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: r.xlen(stream + ":results") >= 12, 30, "the worker's results")
        ids = {fields[b"id"].decode() for _, fields in r.xrange(stream + ":results")}
        assert ids == {f"m{i}" for i in range(12)}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, (tmp_path / "worker.log").read_text()
        log.close()
        r.delete(stream, stream + ":results")


def test_results_a_broker_refuses_are_given_up_after_backing_off_and_never_hold_back_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by an audit: a result Redis refuses (its reply_to is a key of another type: WRONGTYPE) was tried
    again for ever, and with PUBLISH_AT_ONCE such results first nothing else went out. Now each backs off on
    its own, the others are delivered, and it is given up after PUBLISH_RETRY.max_attempts tries (logged once,
    recorded as delivered). An AMQP queue that rejects publishes (full, x-overflow reject-publish) is the same
    Undeliverable."""
    redis = pytest.importorskip("redis")
    import asyncio

    from freight.config import Settings
    from freight.domain.intake import FlushPolicy
    from freight.intake.core import Incoming, Intake
    from freight.intake.redis_source import RedisSource
    from freight.intake.runner import PUBLISH_AT_ONCE, PUBLISH_RETRY, PublishRetries, pump_once
    from freight.intake.settings import IntakeSettings
    from freight.runtime import build_runtime

    class Clock:
        t = 1000.0

        def now(self) -> float:
            return self.t

    r = redis.Redis(host="127.0.0.1", port=6379)
    tag = uuid.uuid4().hex[:10]
    wrong, good = f"freight-string-{tag}", f"freight-out-{tag}"
    r.set(wrong, "not a stream")
    rt = build_runtime(Settings(data_dir=tmp_path / "data", models={SCRIPTED: {"backend": "scripted"}}), lock=False)
    clock = Clock()
    cfg = IntakeSettings("q", "redis", queue=f"freight-in-{tag}", model=SCRIPTED, policy=FlushPolicy(100, 10, 5))
    intake = Intake(cfg, rt.store, rt.files, rt.batches, clock, lambda: {SCRIPTED})
    # Poison lines are results at once: no batch needs to run for the pump to have something to send.
    intake.accept_many([Incoming(f"bad{i}", b"{not json", wrong) for i in range(PUBLISH_AT_ONCE + 5)]
                       + [Incoming(f"good{i}", b"{not json", good) for i in range(3)])
    source = RedisSource(cfg)
    retries = PublishRetries()

    async def drive() -> list[int]:
        delivered = [await pump_once(intake, source, flush=False, retries=retries)]
        delivered.append(await pump_once(intake, source, flush=False, retries=retries))  # all backing off
        for _ in range(PUBLISH_RETRY.max_attempts - 1):
            clock.t += PUBLISH_RETRY.max_delay_s
            delivered.append(await pump_once(intake, source, flush=False, retries=retries))
        await source.close()
        return delivered

    try:
        with caplog.at_level("WARNING", logger="freight.intake"):
            delivered = asyncio.run(drive())
        assert delivered == [3] + [0] * PUBLISH_RETRY.max_attempts
        assert sorted(f[b"id"].decode() for _, f in r.xrange(good)) == ["good0", "good1", "good2"]
        assert intake.ready() == [] and retries.waiting == {}  # given up: recorded as delivered
        events = [getattr(rec, "event", None) for rec in caplog.records]
        assert events.count("intake_publish_refused") == 1 and events.count("intake_undeliverable") == 1, events
        [gave_up] = [rec for rec in caplog.records if getattr(rec, "event", None) == "intake_undeliverable"]
        assert "gave up publishing 105 result(s) after 8 tries" in gave_up.getMessage()
        assert "WRONGTYPE" in gave_up.getMessage()
    finally:
        rt.close()
        r.delete(wrong, good)

    pika = pytest.importorskip("aio_pika")
    from freight.intake.amqp_source import AmqpSource
    from freight.intake.runner import Undeliverable
    from freight.ports import IntakeMessage

    async def amqp() -> None:
        connection = await pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            full = await channel.declare_queue(f"freight-full-{tag}", auto_delete=True, arguments={
                "x-max-length": 1, "x-overflow": "reject-publish"})
            await channel.default_exchange.publish(pika.Message(b"x"), routing_key=full.name)
            source = AmqpSource(IntakeSettings("q", "amqp", queue="in"))
            try:
                with pytest.raises(Undeliverable, match="refused"):
                    await source.publish(IntakeMessage("q", "m", "c", "/v1/chat/completions", "{}", full.name, "m",
                                                       0.0), b"{}")
            finally:
                await source.close()

    asyncio.run(amqp())


def test_the_same_amqp_bytes_from_two_senders_without_a_message_id_are_two_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an audit: the dedupe key of a message with no message_id (nor correlation_id) was the digest of
    its bytes alone, so a second sender's identical request was dropped as a redelivery and never answered.
    The key covers the reply_to too; a redelivery to the same sender is still kept once."""
    pika = pytest.importorskip("aio_pika")
    import asyncio
    import types

    import aiormq.channel

    from freight.config import Settings
    from freight.intake.amqp_source import AmqpSource
    from freight.intake.core import Intake
    from freight.intake.settings import IntakeSettings
    from freight.runtime import build_runtime

    tag = uuid.uuid4().hex[:10]
    rt = build_runtime(Settings(data_dir=tmp_path / "data", models={SCRIPTED: {"backend": "scripted"}}), lock=False)
    cfg = IntakeSettings("q", "amqp", queue=f"freight-in-{tag}", model=SCRIPTED)
    intake = Intake(cfg, rt.store, rt.files, rt.batches, rt.clock, lambda: {SCRIPTED})
    body = json.dumps({"body": _body(0)}).encode()

    async def scenario() -> None:
        connection = await pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(cfg.queue, durable=True)
            with monkeypatch.context() as patch:  # send no message_id, as pika and most clients do (aiormq makes one)
                patch.setattr(aiormq.channel, "UUID", lambda **_: types.SimpleNamespace(hex=None))
                for reply_to in ("sender-a", "sender-b", "sender-a"):  # the last: sender a's redelivery
                    await channel.default_exchange.publish(pika.Message(body, reply_to=reply_to),
                                                           routing_key=queue.name)
            source, stop = AmqpSource(cfg), asyncio.Event()
            consumer = asyncio.create_task(source.consume(intake, stop))
            for _ in range(100):
                if len(rt.store.intake_pending("q")) >= 2 and (await queue.declare()).message_count == 0:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            stop.set()
            await consumer
            await source.close()
            await queue.delete(if_unused=False, if_empty=False)

    try:
        asyncio.run(scenario())
        assert sorted(m.reply_to or "" for m in rt.store.intake_pending("q")) == ["sender-a", "sender-b"]
    finally:
        rt.close()


def test_a_blocked_flush_and_an_unreachable_broker_log_once_per_streak(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Found by an audit: a flush the project's quota held back logged a warning every 0.05 s (89 in 7 s), and
    a broker that could not be reached logged a full traceback every second, with no backoff. Now: one
    warning per streak (the traceback at debug), and the consumer backs off 1 s, 2 s, 4 s ... up to 30 s."""
    pytest.importorskip("redis")
    import asyncio

    from freight.config import Settings
    from freight.domain.intake import FlushPolicy
    from freight.domain.quota import Quota
    from freight.intake.core import Intake
    from freight.intake.redis_source import RedisSource
    from freight.intake.runner import _consume
    from freight.intake.settings import IntakeSettings
    from freight.runtime import build_runtime

    rt = build_runtime(Settings(data_dir=tmp_path / "data", models={SCRIPTED: {"backend": "scripted"}},
                                quota=Quota(max_active_batches=0)), lock=False)
    try:
        cfg = IntakeSettings("q", "redis", url="redis://127.0.0.1:1", queue="in", model=SCRIPTED,
                             policy=FlushPolicy(1, 10, 5))
        intake = Intake(cfg, rt.store, rt.files, rt.batches, rt.clock, lambda: {SCRIPTED})
        intake.accept("m", json.dumps({"body": _body(0)}))
        with caplog.at_level("WARNING", logger="freight.intake"):
            assert [intake.try_flush() for _ in range(40)] == [[]] * 40  # the quota holds it back
        [blocked] = caplog.records
        assert "cannot make a batch yet" in blocked.getMessage() and blocked.levelname == "WARNING"
        caplog.clear()

        async def consume_for(seconds: float) -> None:
            stop = asyncio.Event()
            source = RedisSource(cfg)  # nothing listens on port 1
            task = asyncio.create_task(_consume(intake, source, stop))
            await asyncio.sleep(seconds)
            stop.set()
            await task
            await source.close()

        with caplog.at_level("DEBUG", logger="freight.intake"):
            asyncio.run(consume_for(3.5))  # tries at 0 s, 1 s, 3 s (it was every second)
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        debug = [r for r in caplog.records if r.levelname == "DEBUG" and "consumer failure" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
        assert "reconnecting, backing off up to 30 s" in warnings[0].getMessage()
        assert len(debug) == 3 and all(r.exc_info for r in debug)
    finally:
        rt.close()
