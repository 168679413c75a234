"""The result cache: a re-run of an unchanged file against a remote model (issue 13).

    python bench/bench_cache.py                 # 10,000 requests, 3 re-runs
    python bench/bench_cache.py --requests 2000 --reruns 1

The upstream simulator (``freight.testing.upstream``, 50 ms latency, in this process's threads)
serves a model ``sim`` (``backend = "openai"``). ``freight run`` runs a file of chat requests with
``temperature = 0`` (cacheable), then the same file again to other outputs (each a new batch: every
line is looked up), ``--reruns`` times. Figures: upstream requests and wall time of each run, the
median re-run; target: 0 upstream requests on the re-run and at most 5% of the first run's time.

The ``freight run`` processes keep their compiled bytecode (in a temporary ``PYTHONPYCACHEPREFIX``),
as an installed package does, even where the environment says ``PYTHONDONTWRITEBYTECODE``; a
10-line warm-up run (own data dir and lines) compiles it before the measured runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row
from freight.testing.upstream import Upstream, UpstreamConfig


def main(requests: int = 10_000, reruns: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Upstream(UpstreamConfig(latency_s=0.05)) as up:
        root = Path(tmp)
        config = root / "freight.toml"
        config.write_text(f'[models."sim"]\nbackend = "openai"\nbase_url = "{up.base_url}"\n'
                          f'upstream_model = "sim-chat"\nmax_concurrency = 64\n')
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")

        def write(path: Path, n: int, text: str) -> Path:
            with open(path, "w") as fh:
                for i in range(n):
                    fh.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"model": "sim", "temperature": 0, "max_tokens": 16,
                                                  "messages": [{"role": "user", "content": f"{text} {i}"}]}}) + "\n")
            return path

        def run(path: Path, out: str, data: str = "data") -> float:
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "freight", "run", str(path), "-o", str(root / out),
                            "--data-dir", str(root / data), "--config", str(config)],
                           check=True, capture_output=True, cwd=root, env=env)
            return time.monotonic() - started

        run(write(root / "warm.jsonl", 10, "warm-up"), "warm.jsonl", "warm")
        path = write(root / "in.jsonl", requests, "line")
        before = up.stats().count("ok")
        first_s = run(path, "first.jsonl")
        first_requests = up.stats().count("ok") - before
        again = [run(path, f"again{k}.jsonl") for k in range(max(1, reruns))]
        again_requests = up.stats().count("ok") - before - first_requests
    again_s = statistics.median(again)
    figures = {"requests": requests, "first_s": round(first_s, 2), "first_upstream": first_requests,
               "rerun_s": round(again_s, 2), "reruns_s": [round(a, 2) for a in again],
               "rerun_upstream": again_requests, "rerun_fraction": round(again_s / first_s, 3)}
    print(json.dumps(figures))
    return figures


def run(requests: int = 10_000) -> list[Row]:
    """The ``cache`` rows of ``make bench``: the re-run's time against the first run's, and its upstream calls."""
    f = main(requests)
    return [
        Row("cache", f"re-run of an unchanged {requests:,}-line file: time", f"{f['rerun_s']:.1f} s",
            f"first run {f['first_s']:.1f} s", f"{f['rerun_fraction']:.3f}", "<= 0.05",
            f["rerun_fraction"] <= 0.05),
        Row("cache", "re-run: upstream requests", str(int(f["rerun_upstream"])),
            f"first run {int(f['first_upstream'])}", "", "0", f["rerun_upstream"] == 0),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--reruns", type=int, default=3, help="re-runs of the unchanged file (the median is kept)")
    args = parser.parse_args()
    main(args.requests, args.reruns)
