"""N ``freight worker`` processes against one rate-limited upstream: do they keep to its limit together?

Used by tests/test_shared_limit.py (small) and bench/bench_shared_limit.py (bigger). One
``freight serve --no-worker`` and N workers share a SQLite data dir; every worker serves the model
``remote`` (``backend = "openai"``, ``rpm`` = the upstream's limit) on the simulator
(freight.testing.upstream, its bucket enforcing ``rpm`` with ``burst_s`` = 1 s). With ``redis_url``
the workers share one limiter (freight/backends/shared_limit.py); without it each keeps to ``rpm``
alone, so together they send N times too much.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from freight.testing.upstream import Upstream, UpstreamConfig


@dataclass
class LimitRun:
    workers: int
    rpm: int
    requests: int
    #: Requests the upstream answered 200 / refused with 429 for being over its limit.
    ok: int
    rate_limited: int
    #: Seconds from the first to the last request the upstream admitted.
    span_s: float
    #: Admitted requests per second over the span, as a share of rpm / 60.
    used: float

    def line(self) -> str:
        return (f"{self.workers} workers, rpm {self.rpm}: {self.ok} ok in {self.span_s:.1f} s = "
                f"{self.used:.0%} of the limit, {self.rate_limited} x 429")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command() -> list[str]:
    script = Path(sys.executable).parent / "freight"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "freight"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREIGHT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def measure(root: Path, *, workers: int, rpm: int, requests: int, redis_url: str | None,
            upstream_subprocess: bool = False, timeout_s: float = 300) -> LimitRun:
    """Run one batch of ``requests`` chat requests through ``workers`` workers; what the upstream saw."""
    root.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(Upstream(UpstreamConfig(rpm=rpm, burst_s=1.0, latency_s=0.02),
                                          subprocess=upstream_subprocess))
        server = f'[server]\nredis_url = "{redis_url}"\n' if redis_url else ""
        (root / "freight.toml").write_text(
            f'{server}[models."remote"]\nbackend = "openai"\nbase_url = "{up.base_url}"\nrpm = {rpm}\n'
            'chunk_size = 8\nmax_concurrency = 32\n\n[engine]\npoll_interval_s = 0.05\nmax_attempts = 20\n'
            'retry_base_delay_s = 0.2\n')
        port = _free_port()

        def spawn(name: str, *args: str) -> Path:
            log = root / f"{name}.log"
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(
                    [*_command(), *args, "--data-dir", str(root / "data"), "--config", str(root / "freight.toml")],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(), cwd=root,
                    start_new_session=True))
            return log

        def stop_all() -> None:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)

        stack.callback(stop_all)
        spawn("api", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}/v1"
        client = stack.enter_context(httpx.Client(base_url=base, timeout=30))

        def api_up() -> bool:
            try:
                return client.get("/models").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(api_up, 60, "the API")
        logs = [spawn(f"worker-{i}", "worker") for i in range(workers)]
        for log in logs:
            _wait(lambda log=log: re.search(r"worker \S+ \(data", log.read_text(errors="replace")), 60, f"{log.name}")
        lines = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "remote", "max_tokens": 8, "user": f"r{i}",
                                              "messages": [{"role": "user", "content": f"hello {i}"}]}}).encode()
                         + b"\n" for i in range(requests))
        file_id = client.post("/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}).json()["id"]
        batch = client.post("/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h"}).json()
        done = _wait(lambda: (b := client.get(f"/batches/{batch['id']}").json())["status"]
                     in ("completed", "failed") and b, timeout_s, "the batch")
        if done["request_counts"]["completed"] != requests:
            raise AssertionError(f"batch ended {done['status']} with {done['request_counts']}")
        stats = up.stats()
    admitted = sorted(float(t) for t, _key, outcome in stats.events if outcome == "ok")
    span = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
    used = (len(admitted) - 1) / span / (rpm / 60.0) if span > 0 else 0.0
    return LimitRun(workers, rpm, requests, stats.count("ok"), stats.count("rate_limited"), span, used)
