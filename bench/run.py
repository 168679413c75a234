"""``make bench``: every benchmark, side by side with its baseline in the same run, as one table.

Absolute times on shared machines are noise; the ratio column is the figure to read.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, machine_row

BENCHES = {
    "validate": ("bench.bench_validate", {}),
    "embeddings": ("bench.bench_embeddings", {}),
    "remote": ("bench.bench_remote", {"requests": 2000}),
    "chat": ("bench.bench_chat", {}),
    "chat-peer": ("bench.bench_chat_peer", {}),
    "preview": ("bench.bench_preview", {}),
    "watching": ("bench.bench_watching", {}),
    "shared-limit": ("bench.bench_shared_limit", {}),
    "engine": ("bench.bench_engine", {}),
    "intake": ("bench.bench_intake", {}),
    "cache": ("bench.bench_cache", {}),
    "ray": ("bench.bench_ray", {}),
    "claim": ("bench.bench_claim", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    args = parser.parse_args()
    rows: list[Row] = [machine_row("start")]
    for name in args.only or list(BENCHES):
        module, kwargs = BENCHES[name]
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(importlib.import_module(module).run(**kwargs))
        print(f"  {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows.append(machine_row("end"))
    headers = ("benchmark", "measure", "freight", "baseline", "ratio", "target", "")
    table = [headers] + [(r.bench, r.measure, r.freight, r.baseline, r.ratio, r.target,
                          "" if r.ok is None else ("ok" if r.ok else "MISSED")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    for n, row in enumerate(table):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
