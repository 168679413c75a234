"""Chat against the engine users would pick instead: freight's llama.cpp backend vs llama.cpp's own ``llama-server``.

    make llama-server                                   # once: builds it into ~/.cache/freight/ (see the Makefile)
    python bench/bench_chat_peer.py                     # 32 requests, shared-document and distinct prompts
    python bench/bench_chat_peer.py --requests 128 --rounds 3
    python bench/bench_chat_peer.py --config '{"kv_unified": false}'   # freight with other engine settings

Both engines run the same llama.cpp (the source vendored in the llama-cpp-python release freight installs, built
with the same flags), on the same F32 weights (freight's dequantised copy of the bundled Q4_1 GGUF), with the same
threads. llama-server gets the best settings found here: 32 slots (``-np 32``), a unified KV cache
(``--kv-unified``), continuous batching, 1,024 tokens of context per slot, flash attention ``auto``; it runs on
loopback and gets every request at once (httpx, one connection each). freight runs in process, fed the way its
engine feeds a backend (``bench_chat.run_freight``). Each round starts llama-server afresh (no prompt cache left
from the previous round) and builds a new freight backend; the sides alternate, and the ratio of each round's pair
is reported (median and spread over rounds).

Output tokens/s = completion tokens / wall time from the first request sent to the last answer, prompt processing
included. The binary is ``$FREIGHT_LLAMA_SERVER``, else the newest ``~/.cache/freight/llama-server-*/llama-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_chat import Run, bench_freight, workload
from bench.common import Row
from freight.backends.llama_cpp import DEFAULT_N_SLOTS, convert_weights, smollm2_path

CTX_PER_SLOT = 1024


def server_binary() -> Path | None:
    env = os.environ.get("FREIGHT_LLAMA_SERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    found = sorted(Path.home().glob(".cache/freight/llama-server-*/llama-server"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def llama_server(
    binary: Path, model: Path, threads: int, slots: int, extra: Sequence[str] = ()
) -> Iterator[tuple[str, int]]:
    """A running llama-server on loopback; yields its base URL and process id."""
    port = _free_port()
    cmd = [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(slots * CTX_PER_SLOT), "--kv-unified", "-cb",
        "-t", str(threads), "-tb", str(threads), "--no-webui", "--log-disable", *extra,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"llama-server exited {proc.returncode}: {log.read()[-2000:].decode()}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("llama-server did not become healthy in 120 s")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _send_all(url: str, convs: Sequence[list[dict[str, str]]], max_tokens: int) -> tuple[int, int, float]:
    limits = httpx.Limits(max_connections=len(convs) + 1, max_keepalive_connections=len(convs) + 1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:

        async def one(msgs: list[dict[str, str]]) -> dict[str, Any]:
            body = {"model": "m", "messages": msgs, "max_tokens": max_tokens, "temperature": 0}
            r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return dict(r.json())

        t0 = time.perf_counter()
        outs = await asyncio.gather(*(one(m) for m in convs))
        wall = time.perf_counter() - t0
    prompt = sum(o["usage"]["prompt_tokens"] for o in outs)
    completion = sum(o["usage"]["completion_tokens"] for o in outs)
    return prompt, completion, wall


def bench_server(
    binary: Path, model: Path, convs: Sequence[list[dict[str, str]]], max_tokens: int, threads: int,
    extra: Sequence[str] = (),
) -> Run:  # fmt: skip
    with llama_server(binary, model, threads, DEFAULT_N_SLOTS, extra) as (url, pid):
        asyncio.run(_send_all(url, [[{"role": "user", "content": "Hello!"}]] * 4, 4))  # warm-up, as freight's
        cpu0 = _cpu_seconds(pid)
        p, c, wall = asyncio.run(_send_all(url, convs, max_tokens))
        cpu = (_cpu_seconds(pid) - cpu0) / max(wall, 1e-9) / threads
    return Run("llama-server", wall, p, c, cpu)


def compare(
    convs: Sequence[list[dict[str, str]]], max_tokens: int, threads: int, rounds: int, binary: Path,
    freight_kw: dict[str, Any] | None = None, server_extra: Sequence[str] = (), verbose: bool = True,
) -> tuple[list[float], list[Run], list[Run]]:  # fmt: skip
    """``rounds`` alternated pairs (freight first in even rounds); returns the per-round ratios and the runs."""
    model = convert_weights(smollm2_path(), "f32")
    ratios: list[float] = []
    ours: list[Run] = []
    theirs: list[Run] = []
    for i in range(rounds):
        order = ("freight", "server") if i % 2 == 0 else ("server", "freight")
        for side in order:
            if side == "freight":
                r = bench_freight("freight", convs, max_tokens, n_threads=threads, **(freight_kw or {}))
                ours.append(r)
            else:
                r = bench_server(binary, model, convs, max_tokens, threads, server_extra)
                theirs.append(r)
            if verbose:
                print(f"  round {i + 1} {side}: {r.completion_tokens} tokens in {r.wall:.2f} s = {r.tps:.1f} tok/s,"
                      f" {per_cpu_s(r, threads):.1f} per CPU-second (cpu share {r.cpu:.2f};"
                      f" prompt tokens {r.prompt_tokens})", file=sys.stderr, flush=True)  # fmt: skip
        ratios.append(ours[-1].tps / theirs[-1].tps)
    return ratios, ours, theirs


def per_cpu_s(r: Run, threads: int) -> float:
    """Output tokens per CPU-second of the engine's process (freight: this one; llama-server: its own)."""
    return r.completion_tokens / max(r.cpu * r.wall * threads, 1e-9)


def _spread(ratios: Sequence[float]) -> str:
    return f"{statistics.median(ratios):.2f}x" + (f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")


def run(requests: int = 32, max_tokens: int = 64, rounds: int = 1, big: int = 128) -> list[Row]:
    """``make bench``: freight vs llama-server, shared-document and distinct prompts, and ``big`` requests."""
    binary = server_binary()
    if binary is None:
        return [Row("chat-peer", "vs llama-server", "", "", "", "skipped: run make llama-server")]
    threads = os.cpu_count() or 1
    rows: list[Row] = []
    cases = [(f"{requests} requests, shared document", workload(requests)),
             (f"{requests} requests, distinct prompts", workload(requests, distinct=True))]  # fmt: skip
    if big:
        cases.append((f"{big} requests, shared document", workload(big)))
    for what, convs in cases:
        ratios, ours, theirs = compare(convs, max_tokens, threads, rounds, binary)
        f_tps = statistics.median(r.tps for r in ours)
        s_tps = statistics.median(r.tps for r in theirs)
        target = ">= 1.30x" if "distinct" in what else ""
        ok = statistics.median(ratios) >= 1.3 if target else None
        rows.append(Row("chat-peer", f"output tok/s vs llama-server, {what}", f"{f_tps:.1f}", f"{s_tps:.1f}",
                        _spread(ratios), target, ok))  # fmt: skip
        f_cpu = statistics.median(per_cpu_s(r, threads) for r in ours)
        s_cpu = statistics.median(per_cpu_s(r, threads) for r in theirs)
        rows.append(Row("chat-peer", "  output tokens per CPU-second of the engine's process", f"{f_cpu:.1f}",
                        f"{s_cpu:.1f}", f"{f_cpu / s_cpu:.2f}x", ""))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="alternated pairs per workload")
    ap.add_argument("--workload", choices=("shared", "distinct", "both"), default="both")
    ap.add_argument("--config", default=None, help="JSON of LlamaCppBackend arguments for freight")
    ap.add_argument("--server-args", default="", help="extra llama-server arguments (space separated)")
    args = ap.parse_args()
    binary = server_binary()
    if binary is None:
        sys.exit("no llama-server: run `make llama-server` (or set FREIGHT_LLAMA_SERVER)")
    kinds = ("shared", "distinct") if args.workload == "both" else (args.workload,)
    kw = json.loads(args.config) if args.config else None
    print(f"{binary}; {args.requests} requests, max_tokens {args.max_tokens}, T=0, {args.threads} threads, "
          f"freight {kw or 'defaults'}; llama-server extra {args.server_args.split() or 'none'}")  # fmt: skip
    for kind in kinds:
        convs = workload(args.requests, distinct=kind == "distinct")
        ratios, ours, theirs = compare(convs, args.max_tokens, args.threads, args.rounds, binary, kw,
                                       args.server_args.split())  # fmt: skip
        print(f"{kind}: freight {statistics.median(r.tps for r in ours):.1f} tok/s "
              f"(prompt tokens computed {ours[-1].computed_prompt_tokens} of {ours[-1].prompt_tokens}), "
              f"llama-server {statistics.median(r.tps for r in theirs):.1f} tok/s "
              f"(prompt tokens {theirs[-1].prompt_tokens}); ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {_spread(ratios)}; per CPU-second "
              f"{statistics.median(per_cpu_s(r, args.threads) for r in ours):.1f} vs "
              f"{statistics.median(per_cpu_s(r, args.threads) for r in theirs):.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
