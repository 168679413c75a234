"""Queue intake on the scripted backend, for each kind (Redis Streams, RabbitMQ, HTTP tickets).

Two runs per kind, each against a fresh ``freight serve`` (``flush_size = 200``, ``flush_age_s = 0.5``):

- **saturated**: the producer publishes as fast as it can; messages in to results out, per second
  (first publish to last result received), and each message's publish-to-result latency, which under
  saturation is mostly backlog;
- **paced**: the producer publishes at a steady rate, half the saturated throughput just measured, so
  freight keeps up; per message, the time from publish to the moment the flush policy flushed it (the
  intake's ``intake_flush`` log record, JSON, ms resolution, matched to the message through the store's
  ``intake_messages.flush_id``) against the policy's own bound ``flush_age_s``; the same from the moment
  freight kept the message (``received_at``, where the policy's age starts); and publish to result.
  Where the rate fills ``flush_size`` before ``flush_age_s``, the bound is the fill time instead. The
  pump looks for due flushes every 0.1 s (``PUMP_INTERVAL_S``), between its deliveries.

HTTP: ``POST /v1/freight/intake/{name}`` per message (16 at a time when saturated), results read by
polling the tickets oldest first (16 at a time; a round whose every ticket is still queued waits
50 ms), so its end-to-end figures include the polling.

Run: ``python bench/run.py intake`` (Redis at 127.0.0.1:6379, RabbitMQ at :5672).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import Row

FREIGHT = [sys.executable, "-m", "freight"]
FLUSH_SIZE, FLUSH_AGE_S = 200, 0.5
#: The paced run publishes at this share of the saturated run's throughput.
PACE = 0.5
INTAKE = "b"
HTTP_AT_ONCE = 16


@dataclass
class Run:
    elapsed: float = 0.0
    #: message id -> wall time it was published / its result was received.
    sent: dict[str, float] = field(default_factory=dict)
    got: dict[str, float] = field(default_factory=dict)
    #: message id -> wall time its flush was made (the policy's decision), and why.
    flushed: dict[str, float] = field(default_factory=dict)
    #: message id -> wall time freight kept it (``received_at``, where the policy's age starts).
    received: dict[str, float] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Serve:
    """``freight serve`` in ``root`` with one intake, its log in JSON to ``root/serve.log``."""

    def __init__(self, root: Path, table: str):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "freight.toml").write_text(
            '[models."freight-scripted"]\nbackend = "scripted"\n[engine]\npoll_interval_s = 0.05\n' + table)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
        env["FREIGHT_LOG_FORMAT"] = "json"
        self.log = open(root / "serve.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [*FREIGHT, "serve", "--port", str(self.port), "--data-dir", str(root / "data"), "--config",
             str(root / "freight.toml")], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("freight serve did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()

    def flushes(self, run: Run) -> None:
        """Each message's flush time: the flush records in the log, the messages' flush ids in the store."""
        at: dict[str, float] = {}
        for line in (self.root / "serve.log").read_text(errors="replace").splitlines():
            if '"intake_flush"' not in line:
                continue
            record = json.loads(line)
            at[record["flush_id"]] = datetime.datetime.fromisoformat(record["ts"]).timestamp()
            run.reasons[record["flush_reason"]] += 1
        db = sqlite3.connect(f"file:{self.root / 'data' / 'freight.db'}?mode=ro", uri=True)
        try:
            for message_id, flush_id, received_at in db.execute(
                    "SELECT message_id, flush_id, received_at FROM intake_messages WHERE source = ?", (INTAKE,)):
                run.received[message_id] = received_at
                if flush_id in at:
                    run.flushed[message_id] = at[flush_id]
        finally:
            db.close()


def _body(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"hello {i}"}]}


def _table(kind: str, name: str) -> str:
    key = {"redis": 'stream = "%s"\n', "amqp": 'queue = "%s"\n', "http": ""}[kind]
    return (f'[intake."{INTAKE}"]\nkind = "{kind}"\n' + (key % name if key else "")
            + f'model = "freight-scripted"\nflush_size = {FLUSH_SIZE}\nflush_age_s = {FLUSH_AGE_S}\n')


def _pace_until(started: float, i: int, rate: float | None) -> float:
    """Seconds to wait before the i-th publish (0 when unpaced)."""
    return 0.0 if rate is None else max(0.0, started + i / rate - time.time())


def _redis(root: Path, n: int, rate: float | None) -> Run:
    import redis

    r = redis.Redis()
    name = f"bench-in-{uuid.uuid4().hex[:8]}"
    out = name + ":results"
    serve = Serve(root, _table("redis", name))
    run = Run()
    failed: list[BaseException] = []

    def read() -> None:
        reader = redis.Redis()
        last, deadline = "0", time.time() + 300
        try:
            while len(run.got) < n and time.time() < deadline:
                got: Any = reader.xread({out: last}, block=200, count=1000)
                for _, entries in got or []:
                    now = time.time()
                    for entry_id, fields in entries:
                        last = entry_id
                        run.got[fields[b"id"].decode()] = now
        except BaseException as exc:  # surfaced in the main thread
            failed.append(exc)
        finally:
            reader.close()

    reader = threading.Thread(target=read)
    try:
        reader.start()
        started = time.time()
        for i in range(n):
            time.sleep(_pace_until(started, i, rate))
            run.sent[f"m{i}"] = time.time()
            r.xadd(name, {"id": f"m{i}", "body": json.dumps(_body(i))})
        reader.join()
        run.elapsed = max(run.got.values()) - started
    finally:
        serve.stop()
        r.delete(name, out)
    if failed or len(run.got) < n:
        raise RuntimeError(f"redis: {len(run.got)} of {n} results; {failed}")
    serve.flushes(run)
    return run


def _amqp(root: Path, n: int, rate: float | None) -> Run:
    import aio_pika

    name = f"bench-in-{uuid.uuid4().hex[:8]}"
    run = Run()

    async def go() -> None:
        connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True)
            replies = await channel.declare_queue(name + "-out", auto_delete=True)
            done = asyncio.Event()

            async def on_result(message: Any) -> None:
                async with message.process():
                    run.got[message.correlation_id] = time.time()
                    if len(run.got) == n:
                        done.set()

            await replies.consume(on_result)
            serve = await asyncio.to_thread(Serve, root, _table("amqp", name))
            try:
                started = time.time()
                for i in range(n):
                    await asyncio.sleep(_pace_until(started, i, rate))
                    run.sent[f"m{i}"] = time.time()
                    await channel.default_exchange.publish(aio_pika.Message(
                        json.dumps({"body": _body(i)}).encode(), message_id=f"m{i}", correlation_id=f"m{i}",
                        reply_to=name + "-out"), routing_key=name)
                await asyncio.wait_for(done.wait(), 300)
                run.elapsed = max(run.got.values()) - started
            finally:
                await asyncio.to_thread(serve.stop)
                await channel.queue_delete(name)
            serve.flushes(run)

    asyncio.run(go())
    return run


def _http(root: Path, n: int, rate: float | None) -> Run:
    serve = Serve(root, _table("http", ""))
    run = Run()
    base = f"{serve.url}/v1/freight/intake/{INTAKE}"

    async def go() -> None:
        limits = httpx.Limits(max_connections=2 * HTTP_AT_ONCE)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            outstanding: list[str] = []  # tickets in submission order, result not yet seen
            submitted = asyncio.Event()

            async def submit(i: int) -> None:
                sent = time.time()
                response = await client.post(base, json={"body": _body(i)})
                response.raise_for_status()
                ticket = response.json()["id"]
                run.sent[ticket] = sent
                outstanding.append(ticket)

            async def submit_all() -> None:
                if rate is None:
                    gate = asyncio.Semaphore(HTTP_AT_ONCE)

                    async def one(i: int) -> None:
                        async with gate:
                            await submit(i)

                    await asyncio.gather(*(one(i) for i in range(n)))
                else:
                    pending = []
                    for i in range(n):
                        await asyncio.sleep(_pace_until(started, i, rate))
                        pending.append(asyncio.create_task(submit(i)))
                    await asyncio.gather(*pending)
                submitted.set()

            async def poll(ticket: str) -> bool:
                response = await client.get(f"{base}/{ticket}")
                response.raise_for_status()
                if response.json()["status"] == "queued":
                    return False
                run.got[ticket] = time.time()
                return True

            async def poll_all() -> None:
                while not (submitted.is_set() and not outstanding):
                    chunk = outstanding[:HTTP_AT_ONCE]
                    done = await asyncio.gather(*(poll(t) for t in chunk)) if chunk else []
                    for ticket, finished in zip(chunk, done, strict=True):
                        if finished:
                            outstanding.remove(ticket)
                    if not any(done):
                        await asyncio.sleep(0.05)

            started = time.time()
            await asyncio.wait_for(asyncio.gather(submit_all(), poll_all()), 300)
            run.elapsed = max(run.got.values()) - started

    try:
        asyncio.run(go())
    finally:
        serve.stop()
    serve.flushes(run)
    return run


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _latency_rows(kind: str, label: str, values: list[float], bound: str, bound_s: float) -> list[Row]:
    return [Row("intake", f"{kind}: {label} p{int(p * 100)}", f"{_pct(values, p):.2f} s", bound,
                f"{_pct(values, p) / bound_s:.1f}", "") for p in (0.5, 0.99)]


def run(n: int = 2000, kinds: tuple[str, ...] = ("redis", "amqp", "http")) -> list[Row]:
    fns = {"redis": _redis, "amqp": _amqp, "http": _http}
    bound = f"{FLUSH_AGE_S:.2f} s (flush_age_s)"
    rows = []
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            sat = fns[kind](Path(tmp), n, None)
        throughput = n / sat.elapsed
        rows.append(Row("intake", f"{kind}: {n} messages in to results out (saturated)", f"{throughput:.0f} msg/s",
                        "", "", ""))
        rows += _latency_rows(kind, "saturated publish to result", [sat.got[m] - sat.sent[m] for m in sat.sent],
                              bound, FLUSH_AGE_S)
        rate = PACE * throughput
        with tempfile.TemporaryDirectory() as tmp:
            paced = fns[kind](Path(tmp), n, rate)
        if len(paced.flushed) < n:
            raise RuntimeError(f"{kind}: flush time found for {len(paced.flushed)} of {n} messages")
        flushes = ", ".join(f"{count} by {why}" for why, count in sorted(paced.reasons.items()))
        rows.append(Row("intake", f"{kind}: paced at {rate:.0f} msg/s ({PACE:.0%} of saturated): flushes",
                        flushes, "", "", ""))
        # The policy's own bound at this rate: a batch fills in flush_size / rate, else it ages out.
        fill_s = FLUSH_SIZE / rate
        policy, policy_s = ((f"{fill_s:.2f} s (flush_size/rate)", fill_s) if fill_s < FLUSH_AGE_S
                            else (bound, FLUSH_AGE_S))
        rows += _latency_rows(kind, "paced publish to flush (policy)",
                              [paced.flushed[m] - paced.sent[m] for m in paced.sent], policy, policy_s)
        rows += _latency_rows(kind, "paced kept to flush (policy's own wait)",
                              [paced.flushed[m] - paced.received[m] for m in paced.sent], policy, policy_s)
        rows += _latency_rows(kind, "paced publish to result", [paced.got[m] - paced.sent[m] for m in paced.sent],
                              bound, FLUSH_AGE_S)
    return rows
