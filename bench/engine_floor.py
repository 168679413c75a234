"""The engine's work per request with no engine around it: one thread, one loop of the same store calls
and backend that ``freight run`` makes (ingest, claim, execute, complete, finalize), SQLite as
``bench_engine.py`` sets it up. CPU microseconds per request of each stage: what an in-process engine
cannot go under while the GIL serialises its Python.

    python bench/engine_floor.py [N]          # default 100,000 requests, chunks of 1,024
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_engine import CHAT, _backend, _settings, write_input


def floor(n: int, chunk: int = 256) -> dict[str, float]:
    from freight.cli import local_run
    from freight.domain.batches import BatchStatus
    from freight.engine.decide import decide
    from freight.engine.finalize import finalize_batch
    from freight.engine.ingest import ingest_batch
    from freight.runtime import build_runtime
    from freight.wire import jsonx

    with tempfile.TemporaryDirectory(prefix="freight-bench-floor-") as tmp:
        root = Path(tmp)
        write_input(root / "in.jsonl", n)
        rt = build_runtime(_settings(root), backends=[_backend(chunk, 1)])
        try:
            store, backend, loop = rt.store, rt.catalog.backends[0], asyncio.new_event_loop()
            w0 = time.perf_counter()
            batch, _ = local_run.prepare(rt, root / "in.jsonl", root / "out.jsonl", CHAT, "24h")
            t0 = time.process_time()
            ingest_batch(batch, store, rt.blobs, rt.catalog, rt.settings.engine.input_limits, rt.clock)
            t1 = time.process_time()
            while claimed := store.claim(batch.id, "floor", time.time(), 300, chunk, 5):
                results = loop.run_until_complete(backend.execute(CHAT, [jsonx.loads(c.body) for c in claimed]))
                completions, _ = decide(claimed, results, rt.settings.engine.retry, random.random, time.time())
                store.complete(batch.id, completions)
            t2 = time.process_time()
            store.set_status(batch.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, 0)
            finalize_batch(batch, store, rt.blobs, rt.clock, [BatchStatus.FINALIZING], BatchStatus.COMPLETED)
            done = store.get_batch(None, batch.id)
            assert done is not None and done.status is BatchStatus.COMPLETED
            local_run.deliver(rt, done, root / "out.jsonl", root / "err.jsonl")
            t3, w3 = time.process_time(), time.perf_counter()
            loop.close()
        finally:
            rt.close()
    return {"ingest": (t1 - t0) / n * 1e6, "run": (t2 - t1) / n * 1e6, "finalize": (t3 - t2) / n * 1e6,
            "total": (t3 - t0) / n * 1e6, "rps": n / (w3 - w0)}  # (upload to output file, as bench_engine's)


if __name__ == "__main__":
    figures = floor(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    print("CPU us per request: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items() if k != "rps")
          + f"; {figures['rps']:,.0f} requests/s")
