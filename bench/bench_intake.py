"""Queue intake: messages in to results out, per second, for Redis Streams and RabbitMQ on the scripted
backend, and each message's latency (publish to result received), p50 and p99, against the flush
policy's own bound (``flush_age_s`` plus the time its batch takes: the baseline column is the policy's
wait alone). Run: ``python bench/run.py intake`` (Redis at 127.0.0.1:6379, RabbitMQ at :5672)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import Row

FREIGHT = [sys.executable, "-m", "freight"]
FLUSH_SIZE, FLUSH_AGE_S = 200, 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(root: Path, table: str) -> subprocess.Popen[bytes]:
    port = _free_port()
    (root / "freight.toml").write_text(
        '[models."freight-scripted"]\nbackend = "scripted"\n[engine]\npoll_interval_s = 0.05\n' + table)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
    proc = subprocess.Popen([*FREIGHT, "serve", "--port", str(port), "--data-dir", str(root / "data"), "--config",
                             str(root / "freight.toml")], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("freight serve did not start")


def _body(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"hello {i}"}]}


def _table(kind: str, name: str) -> str:
    key = "stream" if kind == "redis" else "queue"
    return (f'[intake."b"]\nkind = "{kind}"\n{key} = "{name}"\nmodel = "freight-scripted"\n'
            f"flush_size = {FLUSH_SIZE}\nflush_age_s = {FLUSH_AGE_S}\n")


def _redis(root: Path, n: int) -> tuple[float, list[float]]:
    import redis

    r = redis.Redis()
    name = f"bench-in-{uuid.uuid4().hex[:8]}"
    out = name + ":results"
    proc = _serve(root, _table("redis", name))
    sent: dict[str, float] = {}
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        for i in range(n):
            sent[f"m{i}"] = time.perf_counter()
            r.xadd(name, {"id": f"m{i}", "body": json.dumps(_body(i))})
        last = "0"
        while len(latencies) < n:
            got = r.xread({out: last}, block=1000, count=1000)
            for _, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    latencies.append(time.perf_counter() - sent.pop(fields[b"id"].decode()))
        return time.perf_counter() - started, latencies
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        r.delete(name, out)


def _amqp(root: Path, n: int) -> tuple[float, list[float]]:
    import aio_pika

    name = f"bench-in-{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[float, list[float]]:
        connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True)
            replies = await channel.declare_queue(name + "-out", auto_delete=True)
            sent: dict[str, float] = {}
            latencies: list[float] = []
            done = asyncio.Event()

            async def on_result(message: Any) -> None:
                async with message.process():
                    latencies.append(time.perf_counter() - sent.pop(message.correlation_id))
                    if len(latencies) == n:
                        done.set()

            await replies.consume(on_result)
            proc = await asyncio.to_thread(_serve, root, _table("amqp", name))
            try:
                started = time.perf_counter()
                for i in range(n):
                    sent[f"m{i}"] = time.perf_counter()
                    await channel.default_exchange.publish(aio_pika.Message(
                        json.dumps({"body": _body(i)}).encode(), message_id=f"m{i}", correlation_id=f"m{i}",
                        reply_to=name + "-out"), routing_key=name)
                await asyncio.wait_for(done.wait(), 300)
                elapsed = time.perf_counter() - started
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 15)
                await channel.queue_delete(name)
            return elapsed, latencies

    return asyncio.run(go())


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def run(n: int = 2000) -> list[Row]:
    rows = []
    for kind, fn in (("redis", _redis), ("amqp", _amqp)):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, lat = fn(Path(tmp), n)
        rows.append(Row("intake", f"{kind}: {n} messages in to results out", f"{n / elapsed:.0f} msg/s", "", "",
                        ""))
        for p in (0.5, 0.99):
            rows.append(Row("intake", f"{kind}: latency p{int(p * 100)}", f"{_pct(lat, p):.2f} s",
                            f"{FLUSH_AGE_S:.2f} s (flush_age_s)", f"{_pct(lat, p) / FLUSH_AGE_S:.1f}", "", None))
    return rows
