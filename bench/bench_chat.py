"""Chat throughput: freight's llama.cpp backend (continuous batching) vs llama-cpp-python, one request at a time.

    python bench/bench_chat.py                # baseline + the main freight configurations + raw decode rates
    python bench/bench_chat.py --variants     # also other weights, flash attention, no prefix cache, unified KV
    python bench/bench_chat.py --repeat 3     # best of 3 per row (for a shared, noisy machine)
    python bench/bench_chat.py --config '{"n_slots": 16, "n_ctx": 8192}'
    python bench/bench_chat.py --requests 128 --defaults-only --skip-raw [--distinct]   # slots refilled

Workload: 32 chat requests with mixed prompt lengths (the SmolLM2 chat template adds ~30 tokens; the user texts
span ~5 to ~330 tokens), ``max_tokens`` 64, temperature 0, through the model's chat template. The baseline is
llama-cpp-python's high-level ``Llama.create_chat_completion`` on the GGUF as shipped, one request after another
(it reuses the longest common prefix with the previous prompt's KV cache). Freight's backend gets the requests the
way freight's engine sends them: chunks of ``chunk_size`` in up to ``max_concurrency`` concurrent ``execute`` calls.

Output tokens/s = completion tokens / wall time of the whole workload, prompt processing included. ``cpu`` =
process CPU time / (wall x threads): well below ~0.95 means another process competed for the CPU and the row is
not trustworthy (rerun, or use --repeat). The raw table gives bare ``llama_decode`` rates (no sampling) for one
512-token prompt chunk and for decode steps of N sequences x 1 token: what this CPU can do with these weights.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row
from freight.backends.llama_cpp import (
    CHAT,
    DEFAULT_N_SLOTS,
    BatchItem,
    DecodeStats,
    LlamaCppBackend,
    LlamaCppRunner,
    convert_weights,
    smollm2_path,
)
from freight.domain.requests import Result
from freight.wire.jsonx import loads

PARA = (
    "The river runs through the old town, past the mill and the market square, where traders sell bread, "
    "cheese, apples and wool every Saturday morning. In winter the square is quiet and the mill wheel freezes. "
)
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Explain photosynthesis in one sentence.",
    "Write a short poem about winter.",
    "What is 12 times 7?",
    "List the planets of the solar system.",
    "Translate 'good morning' into Spanish.",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "How do airplanes fly?",
    "What is a prime number?",
    "Describe a cat in two sentences.",
]


WARM_UP = [{"role": "user", "content": "Hello!"}]


def workload(n: int = 32, short: bool = False, distinct: bool = False) -> list[list[dict[str, str]]]:
    """Mixed lengths: 0 to ~300 tokens of context before a question. The contexts repeat one paragraph, so prompts
    share prefixes (as requests sharing instructions or a document do); ``distinct`` numbers each request's text at
    its start, so that only the chat template's preamble is common."""
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        reps = 0 if short else (0, 0, 1, 2, 4, 7)[i % 6]
        head = f"Request {i}. " if distinct else ""
        text = head + (f"Read this: {PARA * reps}\n" if reps else "") + q
        out.append([{"role": "user", "content": text}])
    return out


@dataclass
class Run:
    label: str
    wall: float
    prompt_tokens: int
    completion_tokens: int
    cpu: float
    computed_prompt_tokens: int = -1  # freight: prompt tokens run through the model (the rest shared KV cells)
    decode_widths: dict[int, int] | None = None  # freight: sequences per decode step -> steps

    @property
    def tps(self) -> float:
        return self.completion_tokens / self.wall


class CpuMeter:
    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> CpuMeter:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = (time.process_time() - self.c0) / max(self.wall, 1e-9) / self.threads


# ---- (a) freight ------------------------------------------------------------------------------------------------


async def run_freight(
    backend: LlamaCppBackend, convs: Sequence[list[dict[str, str]]], max_tokens: int
) -> tuple[int, int]:
    """Feed the backend the way freight's engine does: chunks of chunk_size, up to max_concurrency at once."""
    bodies = [{"model": backend.model_id, "messages": m, "max_tokens": max_tokens, "temperature": 0} for m in convs]
    chunks = [bodies[i : i + backend.chunk_size] for i in range(0, len(bodies), backend.chunk_size)]
    sem = asyncio.Semaphore(backend.max_concurrency)

    async def one(chunk: list[dict[str, Any]]) -> list[Any]:
        async with sem:
            return await backend.execute(CHAT, chunk)

    results = [r for rs in await asyncio.gather(*(one(c) for c in chunks)) for r in rs]
    prompt = completion = 0
    for r in results:
        assert isinstance(r, Result) and r.status_code == 200 and r.body is not None, r
        usage = loads(r.body)["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    return prompt, completion


def bench_freight(label: str, convs: Sequence[list[dict[str, str]]], max_tokens: int, **kw: Any) -> Run:
    backend = LlamaCppBackend(**kw)

    async def go() -> Run:
        await backend.start()
        await run_freight(backend, [WARM_UP] * 4, 4)
        assert backend.runner is not None and backend.decode_loop is not None
        backend.decode_loop.stats = stats = DecodeStats()
        with CpuMeter(backend.runner.threads) as m:
            p, c = await run_freight(backend, convs, max_tokens)
        await backend.close()
        return Run(label, m.wall, p, c, m.cpu, stats.prompt_tokens, dict(stats.decode_widths))

    return asyncio.run(go())


# ---- (b) llama-cpp-python, one request after another ------------------------------------------------------------


def bench_high_level(
    label: str, path: Path, convs: Sequence[list[dict[str, str]]], max_tokens: int, threads: int
) -> Run:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.create_chat_completion(messages=WARM_UP, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    prompt = completion = 0
    with CpuMeter(threads) as m:
        for msgs in convs:
            out: Any = llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0)  # type: ignore[arg-type]
            prompt += out["usage"]["prompt_tokens"]
            completion += out["usage"]["completion_tokens"]
    llm.close()
    return Run(label, m.wall, prompt, completion, m.cpu)


# ---- raw llama_decode rates -------------------------------------------------------------------------------------


def raw_rates(path: Path, n_seqs: Sequence[int], threads: int, steps: int = 16, context: int = 100) -> dict[Any, float]:
    """Tokens/s of bare forward passes with the backend's context settings: one 512-token prompt chunk ("pp"),
    and decode steps of N sequences x 1 token at ``context`` tokens each. Best of 3 (the machine may be shared)."""
    top = max(n_seqs)
    runner = LlamaCppRunner(path, n_slots=top, n_ctx=top * 1024, n_batch=512, n_threads=threads, prefix_cache=False)
    forward: Callable[[Sequence[BatchItem]], list[int]] = runner.forward
    rates: dict[Any, float] = {}
    for _ in range(3):
        runner.clear()
        t0 = time.perf_counter()
        forward([BatchItem(0, [100 + i % 1000 for i in range(512)], 0, True)])
        rates["pp"] = max(rates.get("pp", 0.0), 512 / (time.perf_counter() - t0))
    for n in n_seqs:
        runner.clear()
        for s in range(n):
            forward([BatchItem(s, [100 + (i * 7 + s) % 1000 for i in range(context)], 0, False)])
        pos = context
        for _ in range(3):  # three timed rounds on the same prompts (the context grows by `steps` each round)
            t0 = time.perf_counter()
            for st in range(steps):
                forward([BatchItem(s, (200 + st,), pos + st, True) for s in range(n)])
            pos += steps
            rates[n] = max(rates.get(n, 0.0), n * steps / (time.perf_counter() - t0))
    runner.close()
    return rates


def _rate_at(rates: dict[Any, float], widths: Sequence[int], w: int) -> float:
    """Bare decode tok/s for ``w`` sequences, interpolated linearly between the measured widths."""
    lo = max(x for x in widths if x <= w)
    hi = min((x for x in widths if x >= w), default=lo)
    if hi == lo:
        return rates[lo]
    return rates[lo] + (rates[hi] - rates[lo]) * (w - lo) / (hi - lo)


def _mean_width(r: Run) -> float:
    widths = r.decode_widths or {}
    steps = sum(widths.values())
    return sum(w * k for w, k in widths.items()) / steps if steps else 0.0


def best_of(label: str, repeat: int, fn: Callable[[], Run], min_cpu: float = 0.9, max_tries: int = 4) -> Run:
    """The fastest of ``repeat`` runs in which the process had the CPU to itself (``cpu`` >= ``min_cpu``).

    On a shared machine a run is retried (``max_tries`` times per wanted run) while another process competes;
    if no clean run is had, the fastest contended one is kept and its ``cpu`` column shows it.
    """
    clean: list[Run] = []
    every: list[Run] = []
    while len(clean) < repeat and len(every) < repeat * max_tries:
        r = fn()
        ok = r.cpu >= min_cpu
        print(
            f"  {label}: {r.completion_tokens} tokens in {r.wall:.2f} s = {r.tps:.1f} tok/s (cpu {r.cpu:.2f})"
            + ("" if ok else " contended"),
            flush=True,
        )
        every.append(r)
        if ok:
            clean.append(r)
    best = max(clean or every, key=lambda r: r.tps)
    best.label = label
    return best


ROWS: list[tuple[str, dict[str, Any]]] = [
    ("freight, defaults: 32 slots, F32 weights", {}),
    ("freight, 32 slots, F16 weights", {"convert": "f16"}),
    ("freight, 32 slots, Q4_1 weights as shipped", {"convert": None}),
    ("freight, 8 slots, F32 weights", {"n_slots": 8, "n_ctx": 8 * 1024}),
]
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("freight, 16 slots, F32 weights", {"n_slots": 16, "n_ctx": 16 * 1024}),
    ("freight, 32 slots, BF16 weights", {"convert": "bf16"}),
    ("freight, 32 slots, Q8_0 weights", {"convert": "q8_0"}),
    ("freight, 32 slots, F32, flash attention auto", {"flash_attn": None}),
    ("freight, 32 slots, F32, no shared prefixes", {"prefix_cache": False}),
    ("freight, 32 slots, F32, unified KV cache", {"kv_unified": True}),
    ("freight, 32 slots, F32, KV cache q8_0 (+ flash attention)", {"kv_type": "q8_0"}),
]


def run(requests: int = 32, max_tokens: int = 64, repeat: int = 1) -> list[Row]:
    """``make bench``: freight's defaults vs llama-cpp-python one request at a time, and the raw decode limits."""
    threads = os.cpu_count() or 1
    convs = workload(requests)
    src = smollm2_path()
    label = "llama-cpp-python, one at a time"
    base = best_of(label, repeat, lambda: bench_high_level(label, src, convs, max_tokens, threads))
    ours = best_of("freight", repeat, lambda: bench_freight("freight", convs, max_tokens, n_threads=threads))
    q8 = best_of("freight, kv_type q8_0", repeat,
                 lambda: bench_freight("freight", convs, max_tokens, n_threads=threads, kv_type="q8_0"))
    other = workload(requests, distinct=True)
    base_d = best_of(label + ", distinct", repeat, lambda: bench_high_level(label, src, other, max_tokens, threads))
    ours_d = best_of("freight, distinct", repeat,
                     lambda: bench_freight("freight", other, max_tokens, n_threads=threads))
    n = DEFAULT_N_SLOTS
    q4 = raw_rates(src, [1, n], threads)
    widths = sorted({1, 2, 4, 8, 16, n})
    f32 = raw_rates(convert_weights(src, "f32"), widths, threads)  # the default engine's weights
    # What bare llama_decode could do for this run: the prompt tokens freight computed at the prompt rate, every
    # output token at the rate of a full step of n sequences (an upper bound: the batch shrinks as requests end).
    prompt_s = ours.computed_prompt_tokens / f32["pp"]
    limit = ours.completion_tokens / (prompt_s + ours.completion_tokens / f32[n])
    # Tighter: the decode steps freight actually ran (as many sequences each), each at the bare rate for its width.
    steps_s = sum(k * w / _rate_at(f32, widths, w) for w, k in (ours.decode_widths or {}).items())
    same_steps = ours.completion_tokens / (prompt_s + steps_s)
    what = f"{requests} chat requests, max_tokens {max_tokens}, T=0"
    return [
        Row("chat", f"output tok/s, {what}", f"{ours.tps:.1f}", f"{base.tps:.1f}", f"{ours.tps / base.tps:.2f}x",
            ">= 3.00x", ours.tps / base.tps >= 3.0),
        Row("chat", f"wall time (cpu share {ours.cpu:.2f} / {base.cpu:.2f})", f"{ours.wall:.1f} s",
            f"{base.wall:.1f} s", "", ""),
        Row("chat", "prompt tokens computed, of those in the requests", f"{ours.computed_prompt_tokens}",
            f"{ours.prompt_tokens}", "", ""),
        Row("chat", "output tok/s, the same, opt-in 8-bit KV cache (kv_type q8_0)", f"{q8.tps:.1f}",
            f"{base.tps:.1f}", f"{q8.tps / base.tps:.2f}x", ""),
        Row("chat", "output tok/s, the same with distinct prompts", f"{ours_d.tps:.1f}", f"{base_d.tps:.1f}",
            f"{ours_d.tps / base_d.tps:.2f}x", ""),
        Row("chat", "  prompt tokens computed (distinct prompts)", f"{ours_d.computed_prompt_tokens}",
            f"{ours_d.prompt_tokens}", "", ""),
        Row("chat", f"output tok/s vs bare llama_decode bound ({n}-seq steps)", f"{ours.tps:.1f}", f"{limit:.1f}",
            f"{ours.tps / limit:.2f}", "(of bound)"),
        Row("chat", "output tok/s vs bare llama_decode, same steps as freight ran", f"{ours.tps:.1f}",
            f"{same_steps:.1f}", f"{ours.tps / same_steps:.2f}", "(of bound)"),
        Row("chat", "  mean sequences per decode step", f"{_mean_width(ours):.1f}", f"{n}", "", ""),
        Row("chat", f"raw decode tok/s, {n} seqs vs 1 seq (F32, the default)", f"{f32[n]:.0f}", f"{f32[1]:.0f}",
            f"{f32[n] / f32[1]:.2f}x", ""),
        Row("chat", f"raw decode tok/s, {n} seqs vs 1 seq (Q4_1 as shipped)", f"{q4[n]:.0f}", f"{q4[1]:.0f}",
            f"{q4[n] / q4[1]:.2f}x", ""),
        Row("chat", "raw prompt tok/s, 512-token chunk: F32 vs Q4_1", f"{f32['pp']:.0f}", f"{q4['pp']:.0f}",
            f"{f32['pp'] / q4['pp']:.2f}x", ""),
        Row("chat", "raw single-sequence decode tok/s: Q4_1 vs F32", f"{q4[1]:.0f}", f"{f32[1]:.0f}",
            f"{q4[1] / f32[1]:.2f}x", ""),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="clean runs per row (the fastest is reported)")
    ap.add_argument("--min-cpu", type=float, default=0.9, help="a run below this cpu share is retried")
    ap.add_argument("--variants", action="store_true", help="also try other engine settings")
    ap.add_argument("--config", action="append", default=[], help="extra row: JSON of LlamaCppBackend arguments")
    ap.add_argument("--short", action="store_true", help="only the short questions (a decode-bound workload)")
    ap.add_argument("--distinct", action="store_true", help="number each request's text: no shared document")
    ap.add_argument("--defaults-only", action="store_true", help="of freight, only the default engine")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-raw", action="store_true")
    args = ap.parse_args()

    convs = workload(args.requests, args.short, args.distinct)
    src = smollm2_path()
    print(
        f"{args.requests} {'short ' if args.short else ''}chat requests, max_tokens {args.max_tokens}, "
        f"temperature 0, {args.threads} threads, model {src.name}, best of {args.repeat}",
        flush=True,
    )
    runs: list[Run] = []
    if not args.skip_baseline:
        label = "llama-cpp-python Llama.create_chat_completion, one at a time"
        runs.append(
            best_of(
                label,
                args.repeat,
                lambda: bench_high_level(label, src, convs, args.max_tokens, args.threads),
                args.min_cpu,
            )
        )
    rows = ROWS[:1] if args.defaults_only else ROWS
    rows = rows + (VARIANTS if args.variants else []) + [(f"freight, {c}", json.loads(c)) for c in args.config]
    for label, kw in rows:
        fn = functools.partial(bench_freight, label, convs, args.max_tokens, n_threads=args.threads, **kw)
        runs.append(best_of(label, args.repeat, fn, args.min_cpu))

    base = runs[0] if not args.skip_baseline else None
    print()
    print(f"| {'mode':<62} | prompt tok | output tok | wall s | output tok/s | vs baseline | cpu  |")
    print(f"|{'-' * 64}|-----------:|-----------:|-------:|-------------:|------------:|-----:|")
    for r in runs:
        ratio = f"{r.tps / base.tps:.2f}x" if base else "-"
        counts = f"{r.prompt_tokens:>10} | {r.completion_tokens:>10} | {r.wall:>6.2f}"
        print(f"| {r.label:<62} | {counts} | {r.tps:>12.1f} | {ratio:>11} | {r.cpu:.2f} |")

    if not args.skip_raw:
        print()
        print("raw llama_decode rates (no sampling; decode at 100 tokens of context per sequence), tokens/s:")
        print(
            f"| {'weights':<20} | {'prompt 512':>10} | {'1 seq':>6} | {'8 seqs':>6} | {'16 seqs':>7} | {'32 seqs':>7} |"
        )
        print(f"|{'-' * 22}|-----------:|-------:|-------:|--------:|--------:|")
        for name, path in (("Q4_1 (as shipped)", src), ("F32", convert_weights(src, "f32")),
                           ("F16", convert_weights(src, "f16"))):
            rates = raw_rates(path, [1, 8, 16, 32], args.threads)
            cells = " | ".join(f"{rates[k]:>{w}.0f}" for k, w in (("pp", 10), (1, 6), (8, 6), (16, 7), (32, 7)))
            print(f"| {name:<20} | {cells} |")


if __name__ == "__main__":
    main()
