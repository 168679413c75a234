"""Remote models at the edge of their rate limits: freight's engine vs the OpenAI cookbook's algorithm.

    python bench/bench_remote.py                  # 10,000 requests, both upstream modes
    python bench/bench_remote.py --quick          # 2,000 requests
    python bench/bench_remote.py --mode quantized --requests 5000

Upstream: ``freight.testing.upstream`` in a child process (its own core), 100 ms latency, limits 6,000
RPM and 1,000,000 TPM counted on real usage (prompt + completion), enforced two ways:

- ``quantized``: buckets holding 1 s of the rate (OpenAI documents that per-minute limits may be
  enforced over shorter periods, e.g. 6,000 RPM as 100 per second);
- ``per-minute``: buckets holding a whole minute (a client may burst a minute's budget at once).

Workload: chat requests with prompts of 10-130 words and ``max_tokens`` from 16 to 512 (mean ~93);
the upstream answers between a fifth of ``max_tokens`` and all of it (mean ~0.6x).

freight: ``freight run``'s code path in this process (SQLite store, engine, ``openai`` backend with
``rpm``/``tpm`` set to the limits). Baseline: the cookbook's ``api_request_parallel_processor.py``
algorithm, re-implemented here on httpx: two continuously refilled buckets starting full, each request
charged its prompt tokens (counted exactly with the upstream's own tokenizer, as tiktoken is for
OpenAI) plus ``n * max_tokens``, never given back; a 1 ms loop; after any rate-limit error every send
pauses 15 s; failed requests retried up to 5 attempts.

Under faults (``compare_faults``, ``--fault-seconds``): the same batch at 1,200 RPM against a fault-free
upstream (the baseline column) and one answering 10% 500s, 3% never, 2% garbage; freight's
``timeout_s`` is 2 s. Figures: the binding limit used (floor time: admitted requests at the limit, over
wall time), the steady admitted rate, lost and doubled results (docs/remote-models.md#under-faults).

Figures: wall time; 429s the upstream sent; requests and tokens per minute the upstream admitted
over the steady part of the run (from the 10th to the 90th percentile of successful answers), as a
fraction of the limits. A baseline run still going after ``--baseline-timeout`` is stopped; its
wall time is then projected from its rate so far (marked ``>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.common import Row
from freight.testing.upstream import CHAT, Upstream, UpstreamConfig, UpstreamStats, count_text_tokens

RPM = 6_000
TPM = 1_000_000
LATENCY_S = 0.1
MODES = {"quantized": 1.0, "per-minute": 60.0}
#: The faults comparison: an upstream limited to 1,200 RPM that answers 10% 500s, never answers 3% and
#: sends 2% garbage (a 200 whose body is cut in half), beside the same upstream without faults.
FAULT_RPM = 1_200
FAULTS = {"error_rate": 0.10, "error_statuses": (500,), "timeout_rate": 0.03, "malformed_rate": 0.02}
#: freight's ``timeout_s`` in the faults comparison (20x the upstream's latency).
FAULT_TIMEOUT_S = 2.0
WORDS = ("river mill market bread cheese apple wool winter square wheel stone light water field road house "
         "the of and to in is was for on that with as by at from his her an are this which be or had not but").split()


def workload(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = rng.randint(10, 130)
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + "?"
        max_tokens = rng.choices([16, 32, 64, 128, 256, 512], weights=[2, 3, 3, 2, 1, 0.5])[0]
        body = {"model": "remote", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                "user": f"r{i:06d}"}
        lines.append({"custom_id": f"r{i:06d}", "method": "POST", "url": CHAT, "body": body})
    return lines


@dataclass
class Side:
    name: str
    wall_s: float
    succeeded: int
    total: int
    rate_limited: int
    rpm: float
    tpm: float
    finished: bool = True

    @property
    def projected_wall_s(self) -> float:
        if self.finished or self.succeeded == 0:
            return self.wall_s
        return self.wall_s * self.total / self.succeeded


def steady_rates(stats: UpstreamStats) -> tuple[float, float]:
    """(requests/min, tokens/min) admitted by the upstream between the 10th and 90th percentile of successes."""
    times = sorted(t for t, _, outcome in stats.events if outcome == "ok")
    if len(times) < 20:
        return math.nan, math.nan
    lo, hi = times[len(times) // 10], times[(len(times) * 9) // 10]
    if hi - lo < 1.0:
        return math.nan, math.nan
    requests = sum(1 for t in times if lo <= t <= hi) / (hi - lo) * 60
    first, last = math.ceil(lo), math.floor(hi)  # whole seconds inside the steady part (idle ones count too)
    admitted = sum(row[2] for row in stats.timeline if first <= row[0] < last)
    tokens = admitted / (last - first) * 60 if last > first else math.nan
    return requests, tokens


def side_from(name: str, stats: UpstreamStats, wall_s: float, total: int, finished: bool) -> Side:
    rpm, tpm = steady_rates(stats)
    return Side(name, wall_s, stats.count("ok"), total, stats.count("rate_limited") + stats.count("throttled"),
                rpm, tpm, finished)


# ---- freight ---------------------------------------------------------------------------------------------------------

def freight_batch(lines: list[dict[str, Any]], up: Upstream,
                  model: dict[str, Any]) -> tuple[float, list[str], list[str]]:
    """Run ``lines`` through ``freight run``'s code path; (wall seconds, output lines, error lines)."""
    from freight.cli import local_run
    from freight.config import Settings
    from freight.domain.retry import RetryPolicy
    from freight.engine.settings import EngineSettings
    from freight.runtime import build_runtime

    with tempfile.TemporaryDirectory(prefix="freight-bench-remote-") as tmp:
        root = Path(tmp)
        input_path = root / "input.jsonl"
        input_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        settings = Settings(data_dir=root / "data", models={"remote": {
            "backend": "openai", "base_url": up.base_url, "upstream_model": "sim", **model}})
        settings.engine = EngineSettings(poll_interval_s=0.05, retry=RetryPolicy(max_attempts=8, base_delay_s=0.5),
                                         input_limits=settings.input_limits)
        settings.sqlite_synchronous = "NORMAL"
        up.reset_stats()
        started = time.perf_counter()
        rt = build_runtime(settings)
        try:
            batch, _ = local_run.prepare(rt, input_path, root / "out.jsonl", CHAT, "24h")
            batch = asyncio.run(local_run.run_batch(rt, batch.id))
            local_run.deliver(rt, batch, root / "out.jsonl", root / "errors.jsonl")
        finally:
            rt.close()
        wall = time.perf_counter() - started
        out = (root / "out.jsonl").read_text().splitlines()
        errors = (root / "errors.jsonl").read_text().splitlines() if (root / "errors.jsonl").exists() else []
    return wall, out, errors


def run_freight(lines: list[dict[str, Any]], up: Upstream) -> Side:
    wall, out, _ = freight_batch(lines, up, {"rpm": RPM, "tpm": TPM})
    assert len(out) == len(lines), f"freight delivered {len(out)} of {len(lines)} lines"
    return side_from("freight", up.stats(), wall, len(lines), True)


# ---- the cookbook's algorithm ----------------------------------------------------------------------------------------

def cookbook_tokens(body: dict[str, Any]) -> int:
    """``num_tokens_consumed_from_request`` for chat: 4 per message + its values + 2, plus n * max_tokens."""
    completion: int = body.get("n", 1) * body.get("max_tokens", 15)
    tokens = 0
    for message in body["messages"]:
        tokens += 4
        for key, value in message.items():
            tokens += count_text_tokens(value)
            if key == "name":
                tokens -= 1
    return tokens + 2 + completion


async def cookbook(lines: list[dict[str, Any]], base_url: str, deadline_s: float) -> tuple[int, bool]:
    """Returns (succeeded, finished)."""
    pending = deque(lines)
    retries: deque[tuple[dict[str, Any], int, int]] = deque()
    capacity_requests, capacity_tokens = float(RPM), float(TPM)
    last_update = time.monotonic()
    in_progress = 0
    succeeded = 0
    last_rate_limit = -math.inf
    started = time.monotonic()
    nxt: tuple[dict[str, Any], int, int] | None = None
    tasks: set[asyncio.Task[None]] = set()

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None,
                                                                 max_keepalive_connections=1000)) as client:

        async def call(request: tuple[dict[str, Any], int, int]) -> None:
            nonlocal in_progress, succeeded, last_rate_limit
            line, cost, attempts_left = request
            try:
                response = await client.post(base_url + "/chat/completions", json=line["body"])
                data = response.json()
                if "error" in data:
                    if response.status_code == 429 or "rate limit" in str(data["error"].get("message", "")).lower():
                        last_rate_limit = time.monotonic()
                    if attempts_left:
                        retries.append(request)
                else:
                    succeeded += 1
            except (httpx.HTTPError, ValueError):
                if attempts_left:
                    retries.append(request)
            finally:
                in_progress -= 1

        while True:
            if time.monotonic() - started > deadline_s:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return succeeded, False
            if nxt is None:
                if retries:
                    nxt = retries.popleft()
                elif pending:
                    line = pending.popleft()
                    nxt = (line, cookbook_tokens(line["body"]), 5)
            now = time.monotonic()
            elapsed = now - last_update
            capacity_requests = min(capacity_requests + RPM * elapsed / 60.0, float(RPM))
            capacity_tokens = min(capacity_tokens + TPM * elapsed / 60.0, float(TPM))
            last_update = now
            if nxt is not None and capacity_requests >= 1 and capacity_tokens >= nxt[1]:
                capacity_requests -= 1
                capacity_tokens -= nxt[1]
                in_progress += 1
                task = asyncio.create_task(call((nxt[0], nxt[1], nxt[2] - 1)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                nxt = None
            if in_progress == 0 and nxt is None and not pending and not retries:
                return succeeded, True
            await asyncio.sleep(0.001)
            since = time.monotonic() - last_rate_limit
            if since < 15:
                await asyncio.sleep(15 - since)


def run_cookbook(lines: list[dict[str, Any]], up: Upstream, deadline_s: float) -> Side:
    up.reset_stats()
    started = time.perf_counter()
    _, finished = asyncio.run(cookbook(lines, up.base_url, deadline_s))
    wall = time.perf_counter() - started
    return side_from("cookbook", up.stats(), wall, len(lines), finished)


# ---- the table ------------------------------------------------------------------------------------------------------

def compare(mode: str, n: int, baseline_timeout_s: float, log: bool = True) -> list[Row]:
    lines = workload(n)
    config = UpstreamConfig(rpm=RPM, tpm=TPM, burst_s=MODES[mode], latency_s=LATENCY_S, max_events=4 * n + 1000)
    with Upstream(config, subprocess=True) as up:
        if log:
            print(f"[{mode}, {n} requests] freight ...", file=sys.stderr, flush=True)
        ours = run_freight(lines, up)
        if log:
            print(f"  {ours}", file=sys.stderr, flush=True)
            print(f"[{mode}, {n} requests] cookbook ...", file=sys.stderr, flush=True)
        base = run_cookbook(lines, up, max(baseline_timeout_s, 1.5 * ours.wall_s))
        if log:
            print(f"  {base}", file=sys.stderr, flush=True)
    label = f"remote {mode} {n // 1000}k"
    prefix = "" if base.finished else ">"

    def frac(x: float, limit: int) -> str:
        return "n/a" if math.isnan(x) else f"{x / limit:.3f}"

    binding_ours = max(ours.rpm / RPM, ours.tpm / TPM)
    wall_ratio = base.projected_wall_s / ours.wall_s
    return [
        Row(label, "wall time", f"{ours.wall_s:.1f} s", f"{prefix}{base.projected_wall_s:.1f} s",
            f"{prefix}{wall_ratio:.2f}x", "freight faster", wall_ratio > 1),
        Row(label, "429s received", str(ours.rate_limited), str(base.rate_limited), "", "fewer",
            ours.rate_limited < base.rate_limited or ours.rate_limited == 0),
        Row(label, "steady RPM / 6,000", frac(ours.rpm, RPM), frac(base.rpm, RPM), "", "", None),
        Row(label, "steady TPM / 1,000,000", frac(ours.tpm, TPM), frac(base.tpm, TPM), "", "", None),
        Row(label, "binding limit used", f"{binding_ours:.3f}",
            f"{max(base.rpm / RPM, base.tpm / TPM):.3f}", "", ">= 0.95", binding_ours >= 0.95),
        Row(label, "succeeded", f"{ours.succeeded}/{n}", f"{base.succeeded}/{n}", "", "all", ours.succeeded == n),
    ]


@dataclass
class FaultRun:
    wall_s: float
    #: Requests the upstream admitted (charged to its limit), faulty answers included.
    admitted: int
    succeeded: int
    lost: int
    #: Requests with more than one line in the result files.
    doubled: int
    #: Requests the upstream answered successfully more than once: an answer that came after freight's
    #: ``timeout_s`` (on a starved machine), then the request sent again.
    answered_twice: int
    outcomes: dict[str, int]
    #: Requests the upstream admitted per minute between the 10th and 90th percentile of successes.
    steady_rpm: float
    #: Seconds from the start to the first answer, and from the 99th percentile of successes to the last.
    first_s: float
    tail_s: float

    def used(self, rpm: int) -> float:
        """The binding limit's share used: floor time (admitted requests at the limit) / wall time."""
        return self.admitted / rpm * 60 / self.wall_s


def fault_run(lines: list[dict[str, Any]], up: Upstream, rpm: int) -> FaultRun:
    wall, out, errors = freight_batch(lines, up, {"rpm": rpm, "timeout_s": FAULT_TIMEOUT_S})
    stats = up.stats()
    ids = [json.loads(x)["custom_id"] for x in out + errors]
    ok = {json.loads(x)["custom_id"] for x in out if json.loads(x)["response"]["status_code"] == 200}
    doubled = len(ids) - len(set(ids))
    twice = sum(max(0, stats.ok(x["custom_id"]) - 1) for x in lines)
    times = sorted(t for t, _, outcome in stats.events if outcome == "ok")
    first, last = math.ceil(times[len(times) // 10]), math.floor(times[(len(times) * 9) // 10])
    steady = sum(row[1] for row in stats.timeline if first <= row[0] < last) / max(1, last - first) * 60
    return FaultRun(wall, sum(row[1] for row in stats.timeline), len(ok), len(lines) - len(ok), doubled, twice,
                    dict(stats.outcomes), steady, stats.events[0][0], times[-1] - times[(len(times) * 99) // 100])


def compare_faults(seconds: float = 75.0, rpm: int = FAULT_RPM, log: bool = True) -> list[Row]:
    """The same batch against a fault-free upstream and a faulty one (FAULTS), both limited to ``rpm``."""
    n = int(rpm * seconds / 60)
    lines = workload(n, seed=2)
    runs: dict[str, FaultRun] = {}
    for name, faults in (("fault-free", {}), ("faulty", FAULTS)):
        config = UpstreamConfig(rpm=rpm, burst_s=1.0, latency_s=LATENCY_S, max_events=4 * n + 1000, seed=5,
                                **faults)  # type: ignore[arg-type]
        with Upstream(config, subprocess=True) as up:
            if log:
                print(f"[faults, {rpm} RPM, {n} requests] freight vs a {name} upstream ...", file=sys.stderr,
                      flush=True)
            runs[name] = fault_run(lines, up, rpm)
            if log:
                print(f"  {runs[name]}", file=sys.stderr, flush=True)
    faulty, clean = runs["faulty"], runs["fault-free"]
    label = f"remote faults {rpm:,} RPM"
    used, used_clean = faulty.used(rpm), clean.used(rpm)
    return [
        Row(label, "binding limit used (faulty | fault-free)", f"{used:.3f}", f"{used_clean:.3f}",
            f"{used / used_clean:.2f}x", ">= 0.95", used >= 0.95),
        Row(label, "steady admitted RPM / limit", f"{faulty.steady_rpm / rpm:.3f}",
            f"{clean.steady_rpm / rpm:.3f}", "", "", None),
        Row(label, "lost / doubled", f"{faulty.lost}/{faulty.doubled}", f"{clean.lost}/{clean.doubled}", "",
            "0/0", faulty.lost == faulty.doubled == clean.lost == clean.doubled == 0),
        Row(label, "wall time", f"{faulty.wall_s:.1f} s", f"{clean.wall_s:.1f} s", "", "", None),
        Row(label, "upstream attempts / requests", f"{faulty.admitted}/{n}", f"{clean.admitted}/{n}", "", "", None),
        Row(label, "answered twice upstream (late, after timeout_s)", str(faulty.answered_twice),
            str(clean.answered_twice), "", "", None),
    ]


def run(requests: int = 10_000, modes: tuple[str, ...] = tuple(MODES), baseline_timeout_s: float = 180.0,
        fault_seconds: float = 60.0) -> list[Row]:
    """For bench/run.py."""
    rows: list[Row] = []
    for mode in modes:
        rows += compare(mode, requests, baseline_timeout_s)
    if fault_seconds > 0:
        rows += compare_faults(fault_seconds)
    return rows


def print_table(rows: list[Row]) -> None:
    headers = ("benchmark", "measure", "freight", "baseline", "ratio", "target", "")
    table = [headers] + [(r.bench, r.measure, r.freight, r.baseline, r.ratio, r.target,
                          "" if r.ok is None else ("ok" if r.ok else "MISSED")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    for n, row in enumerate(table):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=None, help="batch size (default 10,000; --quick: 2,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    parser.add_argument("--mode", choices=[*MODES, "both", "none"], default="both",
                        help="rate-limit modes of the freight vs cookbook comparison (none: skip it)")
    parser.add_argument("--fault-seconds", type=float, default=60.0,
                        help="length of the faults comparison at 1,200 RPM (0: skip it)")
    parser.add_argument("--baseline-timeout", type=float, default=180.0,
                        help="stop the baseline after this many seconds (or 1.5x freight's wall time if longer)")
    args = parser.parse_args()
    n = args.requests or (2_000 if args.quick else 10_000)
    modes = tuple(MODES) if args.mode == "both" else () if args.mode == "none" else (args.mode,)
    print_table(run(n, modes, args.baseline_timeout, args.fault_seconds))


if __name__ == "__main__":
    main()
