"""Engine throughput: the scripted backend (no model time), N requests from upload to output file.

    python bench/bench_engine.py                         # 10k and 100k on SQLite, 100k on PostgreSQL 1/4 workers
    python bench/bench_engine.py --sizes 10000 --no-postgres --no-io
    python bench/bench_engine.py --io-requests 2000      # I/O-bound scaling: 1, 2, 4 workers

SQLite: ``freight run``'s code path in this process (``local_run.prepare``/``run_batch``/``deliver``,
``sqlite_synchronous=NORMAL`` as ``bench_remote``), alternated with its baseline, ``engine_floor.py``: the
same store calls and backend in one loop on one thread with no engine around them, so that the gap
between the two is what the engine's concurrency, scheduling and bookkeeping cost.

PostgreSQL: this process uploads and creates the batch and waits for it; 1 or 4 worker *processes* (this file
with ``--as-worker``: ``build_runtime`` on ``--database-url`` and the shared data dir, the engine with the
scripted backend, exactly what ``freight worker`` runs) do the work; one of them holds the batch-steps lease
(ingest, finalize).

Stages (cost per request, in microseconds, wall time of the store calls summed over the process
that ran them: SQLite only, where everything runs in this process): ingest (``insert_requests``),
claim, complete, finalize (``results`` pages + file writing as the whole finalize step).

I/O-bound scaling: the scripted backend sleeping 200 ms per request (``{"sleep_s": 0.2}``, as an
upstream with 200 ms latency answers) with a per-worker cap of 64 requests in flight (``slots=64``);
1, 2, 4 worker processes on PostgreSQL; throughput ratios against one worker (targets 1.8x and 3.4x).
Each worker claims chunks of 16 and keeps ``IO_CONCURRENCY`` = 6 of them (96 requests) claimed against
those 64 slots, so that the upstream's slots stay full while a finished chunk's results are being
stored (with exactly 4 chunks, every store round trip left 16 slots idle; both are shown by
``--io-concurrency``). 8,000 requests by default: with 2,000, the batch steps that run once (ingest,
finalize, about 0.1 s each) were a tenth of the 4-worker run and measured those, not the scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, reset_peak_rss, vm_hwm_mb

CHAT = "/v1/chat/completions"
PG_ADMIN = os.environ.get("FREIGHT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
CHUNK = 256
CONCURRENCY = 8
IO_CONCURRENCY = 6
#: How often the SQLite run looks at the batch's status, for the stages' wall times (``freight run``: every
#: 0.25 s). Every 10 ms, as before, cost the run itself about 4%: each look is a store read on a thread
#: that waits for the interpreter's lock behind the engine's threads (2.4 ms a look, measured).
POLL_S = 0.05
MAX_LINES = 2_000_000


def write_input(path: Path, n: int, script: dict[str, Any] | None = None) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            body: dict[str, Any] = {"model": "freight-scripted", "messages": [{"role": "user", "content": f"hi {i}"}],
                                    "max_tokens": 4}
            if script:
                body["script"] = script
            fh.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": body}) + "\n")


def _settings(root: Path, database_url: str | None = None) -> Any:
    from dataclasses import replace

    from freight.config import Settings
    from freight.engine.settings import EngineSettings
    from freight.services.files import UploadLimits

    settings = Settings(data_dir=root / "data")
    settings.input_limits = replace(settings.input_limits, max_lines=MAX_LINES)  # past OpenAI's 50,000
    settings.upload = UploadLimits(input=settings.input_limits)
    settings.engine = EngineSettings(poll_interval_s=0.05, input_limits=settings.input_limits)
    settings.sqlite_synchronous = "NORMAL"
    settings.database_url = database_url
    return settings


def _backend(chunk: int, concurrency: int) -> Any:
    from freight.backends.scripted import ScriptedBackend

    return ScriptedBackend(chunk_size=chunk, max_concurrency=concurrency)


class Stages:
    """Wall time spent in the store calls of each stage (this process only)."""

    WRAP = {"insert_requests": "ingest", "claim": "claim", "claim_runnable": "claim", "claim_many": "claim",
            "complete": "complete", "complete_many": "complete", "results": "finalize"}

    def __init__(self, store: Any):
        self.seconds = dict.fromkeys(set(self.WRAP.values()), 0.0)
        for name, stage in self.WRAP.items():
            fn = getattr(store, name, None)
            if fn is not None:
                setattr(store, name, self._timed(fn, stage))

    def _timed(self, fn: Any, stage: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t
        return timed


def run_sqlite(n: int, chunk: int = CHUNK, concurrency: int = CONCURRENCY, poll_s: float = POLL_S) -> dict[str, float]:
    """One batch of ``n`` through ``freight run``'s code path; figures."""
    from freight.cli import local_run
    from freight.runtime import build_runtime, tune_gc

    with tempfile.TemporaryDirectory(prefix="freight-bench-engine-") as tmp:
        root = Path(tmp)
        write_input(root / "in.jsonl", n)
        reset_peak_rss()  # this run's peak, not that of what ran before it in this process
        rt = build_runtime(_settings(root), backends=[_backend(chunk, concurrency)], exclusive=True)  # as `freight run`
        tune_gc()  # as `freight run` does
        stages = Stages(rt.store)
        try:
            started, cpu = time.perf_counter(), time.process_time()
            batch, _ = local_run.prepare(rt, root / "in.jsonl", root / "out.jsonl", CHAT, "24h")
            uploaded = time.perf_counter()
            seen: dict[str, float] = {}
            batch = asyncio.run(local_run.run_batch(
                rt, batch.id, lambda b: seen.setdefault(str(b.status), time.perf_counter() - started), poll_s=poll_s))
            local_run.deliver(rt, batch, root / "out.jsonl", root / "err.jsonl")
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            rt.close()
        lines = sum(1 for _ in open(root / "out.jsonl", "rb"))
        assert lines == n, f"{lines} output lines for {n} requests ({batch.status})"
    figures = {"wall": wall, "rps": n / wall, "upload_us": (uploaded - started) / n * 1e6, "cpu_us": cpu / n * 1e6,
               "rss_mb": vm_hwm_mb()}  # this run's peak (reset above)
    figures.update({f"{k}_us": v / n * 1e6 for k, v in stages.seconds.items()})
    figures.update(_phases(seen, wall, n, uploaded - started))
    return figures


def _phases(seen: dict[str, float], wall: float, n: int, since: float = 0.0) -> dict[str, float]:
    """Wall time per request between status changes (polled): validating (from ``since``) until in
    progress; claim + complete until finalizing; finalize (and delivery) until the end."""
    running, finalizing = seen.get("in_progress", since), seen.get("finalizing", wall)
    return {"ingest_phase_us": (running - since) / n * 1e6, "run_us": (finalizing - running) / n * 1e6,
            "finalize_phase_us": (wall - finalizing) / n * 1e6}


# ---- PostgreSQL, worker processes --------------------------------------------------------------------------------

@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    import psycopg

    name = f"freight_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        from freight.store.postgres.migrate import migrate

        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        migrate(url)  # what `freight migrate --database-url` does
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_worker(root: Path, url: str, chunk: int, concurrency: int, slots: int | None) -> None:
    """What ``freight worker --database-url`` runs, with the scripted backend; prints peak RSS on SIGTERM."""
    import signal

    from freight.backends.scripted import ScriptedBackend
    from freight.runtime import build_runtime, tune_gc

    backend = ScriptedBackend(chunk_size=chunk, max_concurrency=concurrency, slots=slots)
    rt = build_runtime(_settings(root, url), backends=[backend])
    tune_gc()  # as `freight worker` does

    async def work() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)  # imported and connected: the parent starts its clock when all are
        cpu[0] = time.process_time()
        await rt.engine.run(stop)

    cpu = [0.0]
    try:
        asyncio.run(work())
    finally:
        rt.close()
    print(json.dumps({"rss_mb": vm_hwm_mb(),  # (ru_maxrss would carry this bench's own peak across exec)
                      "executed": backend.executed, "cpu_s": time.process_time() - cpu[0]}), flush=True)


def run_postgres(n: int, workers: int, chunk: int = CHUNK, concurrency: int = CONCURRENCY,
                 script: dict[str, Any] | None = None, slots: int | None = None) -> dict[str, float]:
    from freight.cli import local_run
    from freight.domain.batches import TERMINAL
    from freight.runtime import build_runtime

    with tempfile.TemporaryDirectory(prefix="freight-bench-engine-pg-") as tmp, pg_database() as url:
        root = Path(tmp)
        write_input(root / "in.jsonl", n, script)
        rt = build_runtime(_settings(root, url), backends=[])  # the API side: no engine runs here
        procs: list[subprocess.Popen[str]] = []
        try:
            cmd = [sys.executable, __file__, "--as-worker", str(root), url, str(chunk), str(concurrency),
                   str(slots or 0)]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
            for p in procs:  # the clock starts once every worker has imported and connected (seconds on a
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"  # busy machine)
            started = time.perf_counter()
            batch, _ = local_run.prepare(rt, root / "in.jsonl", root / "out.jsonl", CHAT, "24h")
            seen: dict[str, float] = {}
            while batch.status not in TERMINAL:
                time.sleep(0.02)
                now = rt.store.get_batch(local_run.PROJECT, batch.id)
                assert now is not None
                batch = now
                seen.setdefault(str(batch.status), time.perf_counter() - started)
            local_run.deliver(rt, batch, root / "out.jsonl", root / "err.jsonl")
            wall = time.perf_counter() - started
        finally:
            reports = []
            for p in procs:
                p.terminate()
            for p in procs:
                out, _ = p.communicate(timeout=60)
                reports.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
            rt.close()
        lines = sum(1 for _ in open(root / "out.jsonl", "rb"))
        assert lines == n, f"{lines} output lines for {n} requests ({batch.status})"
    # Wall time per stage, seen from outside (status changes, polled every 20 ms): upload and ingest until
    # in progress; claim + complete until finalizing; finalize until completed.
    phases = _phases(seen, wall, n)
    return {"wall": wall, "rps": n / wall, "ingest_us": phases["ingest_phase_us"], "run_us": phases["run_us"],
            "finalize_us": phases["finalize_phase_us"],
            "rss_mb": max(r.get("rss_mb", 0) for r in reports),
            # CPU time of the workers together, per request (what a loaded machine does not change much)
            "cpu_us": sum(r.get("cpu_s", 0) for r in reports) / n * 1e6,
            "executed": [r.get("executed", 0) for r in reports]}  # type: ignore[dict-item]


# ---- the table -----------------------------------------------------------------------------------------------------

def run(sizes: tuple[int, ...] = (10_000, 100_000), postgres: bool = True, io_requests: int = 8000,
        repeat: int = 1, pg_sizes: tuple[int, ...] | None = None, io_concurrency: int = IO_CONCURRENCY) -> list[Row]:
    rows: list[Row] = []
    from bench.engine_floor import floor

    for n in sizes:
        # Alternated with the baseline: the same store calls and backend in one loop on one thread, no engine
        # around them (bench/engine_floor.py), upload to output file as here.
        runs, floors = [], []
        for _ in range(repeat):
            runs.append(run_sqlite(n))
            floors.append(floor(n, CHUNK)["rps"])
        runs.sort(key=lambda f: f["rps"])
        f, base = runs[len(runs) // 2], sorted(floors)[len(floors) // 2]
        rows.append(Row("engine", f"SQLite, 1 process, {n:,} requests (req/s)", f"{f['rps']:,.0f}",
                        f"{base:,.0f} (no engine, one thread)", f"{f['rps'] / base:.2f}x", ">= 20,000",
                        f["rps"] >= 20_000))
        stages = ", ".join(f"{k} {f[k + '_us']:.0f}" for k in ("upload", "ingest", "claim", "complete", "finalize"))
        rows.append(Row("engine", f"  {n:,}: us per request in store calls", stages, "", "", ""))
        phases = ", ".join(f"{k} {f[k + '_us']:.0f}" for k in ("ingest_phase", "run", "finalize_phase"))
        rows.append(Row("engine", f"  {n:,}: us per request between status changes", phases, "", "", ""))
        rows.append(Row("engine", f"  {n:,}: CPU us per request; peak RSS MB", f"{f['cpu_us']:.0f}; {f['rss_mb']:.0f}",
                        "", "", ""))
    for n in (pg_sizes or (max(sizes),)) if postgres else ():
        for workers in (1, 4):
            f = run_postgres(n, workers)
            rows.append(Row("engine", f"PostgreSQL, {workers} worker(s), {n:,} requests (req/s)", f"{f['rps']:,.0f}",
                            "", "", ">= 15,000" if workers == 4 else "", f["rps"] >= 15_000 if workers == 4 else None))
            rows.append(Row("engine", f"  peak RSS of a worker ({workers}), MB", f"{f['rss_mb']:.0f}", "", "", ""))
            rows.append(Row("engine", f"  us per request ({workers}): ingest, claim+complete, finalize; worker CPU",
                            f"{f['ingest_us']:.0f}, {f['run_us']:.0f}, {f['finalize_us']:.0f}; {f['cpu_us']:.0f}",
                            "", "", ""))
    if io_requests:
        base = 0.0
        for workers in (1, 2, 4):
            f = run_postgres(io_requests, workers, chunk=16, concurrency=io_concurrency, script={"sleep_s": 0.2},
                             slots=64)
            base = base or f["rps"]
            target = {2: 1.8, 4: 3.4}.get(workers)
            rows.append(Row("engine", f"I/O-bound 200 ms, cap 64/worker, {io_requests:,} requests, {workers} worker(s)"
                                      " (req/s)",
                            f"{f['rps']:,.0f}", f"{base:,.0f}", f"{f['rps'] / base:.2f}x",
                            f">= {target}x" if target else "", f["rps"] / base >= target if target else None))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-worker":
        root, url, chunk, concurrency, slots = sys.argv[2:7]
        as_worker(Path(root), url, int(chunk), int(concurrency), int(slots) or None)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--io-requests", type=int, default=8000, help="0: skip the I/O-bound scaling")
    parser.add_argument("--io-concurrency", type=int, default=IO_CONCURRENCY,
                        help="chunks of 16 each worker keeps claimed against its 64 slots")
    parser.add_argument("--pg-sizes", default="", help="PostgreSQL sizes (default: the largest of --sizes)")
    parser.add_argument("--repeat", type=int, default=1, help="SQLite runs per size (the median is shown)")
    args = parser.parse_args()
    pg_sizes = tuple(int(s) for s in args.pg_sizes.split(",")) if args.pg_sizes else None
    rows = run(tuple(int(s) for s in args.sizes.split(",")), not args.no_postgres, args.io_requests, args.repeat,
               pg_sizes, args.io_concurrency)
    for r in rows:
        print(f"{r.measure:<60} {r.freight:<50} {r.baseline:<26} {r.ratio:<7} {r.target}")


if __name__ == "__main__":
    main()
