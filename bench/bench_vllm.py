"""GPU benchmark of the vllm backend: vLLM's offline engine vs transformers' ``generate`` one prompt at a time, and
an end-to-end ``freight run`` of a chat batch through ``backend = "vllm"``. NOT YET RUN: it needs a CUDA GPU and
``pip install -e '.[vllm]'`` (docs/vllm.md says how; nothing here runs on the 2-core CPU machines).

    python bench/bench_vllm.py --model Qwen/Qwen2.5-0.5B-Instruct            # all three sides
    python bench/bench_vllm.py --model /models/qwen --requests 256 --max-tokens 128
    python bench/bench_vllm.py --model /models/qwen --sides vllm,freight      # skip the slow transformers side
    python bench/bench_vllm.py --model /models/qwen --sides features --embed-model /models/bge-small

First, ``features`` runs every parameter family (JSON schema, json_object, forced/named/auto tool calls, logprobs,
n + seed + stop, penalties, logit_bias, a 400 for an unknown parameter and for an over-long prompt, completions
with echo, embeddings with ``--embed-model``) through ``VllmBackend.execute`` and checks each answer with the
openai SDK's models; it prints PASS/FAIL per check.

Workload: ``--requests`` chat prompts (distinct questions, the model's chat template), greedy decoding,
``--max-tokens`` new tokens at most. Each side runs in its own child process, so each gets the whole GPU:

- ``hf``: transformers ``AutoModelForCausalLM.generate`` on one prompt after another (``--hf-requests`` of them,
  default 16: one at a time is slow), ``do_sample=False``, the same dtype: the baseline vLLM's "up to 24x" compares
  against.
- ``vllm``: ``vllm.LLM.generate`` on all prompts at once (vLLM's own continuous batching).
- ``freight``: ``freight run`` on a JSONL batch of the same requests, the model configured as
  ``backend = "vllm"`` (the engine's chunks, the store, the output file: everything a user gets).

Output tokens/s = generated tokens / wall time of the generation (model loading excluded for ``hf`` and ``vllm``;
for ``freight`` the wall time of ``freight run`` minus its model load, which the engine logs, is not separable,
so its row includes the load: read it against ``vllm``'s load time printed beside it). The ratios printed are
vllm/hf and freight/vllm from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "vllm"
TOPICS = ["the tides", "photosynthesis", "a binary search", "the French revolution", "TCP handshakes", "volcanoes",
          "compound interest", "the immune system", "public-key cryptography", "glaciers", "jazz harmony",
          "the printing press", "black holes", "garbage collection", "coral reefs", "the Silk Road"]
STYLES = ["in two sentences", "to a child", "as a numbered list", "with one example", "in one paragraph",
          "and its history", "and a common misconception", "for an engineer"]


def prompts(n: int) -> list[str]:
    """``n`` distinct questions."""
    return [f"Explain {TOPICS[i % len(TOPICS)]} {STYLES[(i // len(TOPICS)) % len(STYLES)]} (#{i})." for i in range(n)]


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def side_vllm(args: argparse.Namespace) -> dict[str, Any]:
    import vllm

    t0 = time.perf_counter()
    llm = vllm.LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                   gpu_memory_utilization=args.gpu_memory_utilization, seed=0)
    load_s = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    ids = [tok.encode(tok.apply_chat_template(_messages(p), tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False) for p in prompts(args.requests)]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    llm.generate([{"prompt_token_ids": ids[0]}], params)  # warm-up (CUDA graphs, kernels)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": x} for x in ids], params)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"side": "vllm", "requests": len(ids), "output_tokens": tokens, "wall_s": wall, "load_s": load_s,
            "first": outs[0].outputs[0].text[:200]}


def side_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16,
             "float32": torch.float32, "float": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).to("cuda").eval()
    load_s = time.perf_counter() - t0
    texts = prompts(args.requests)[: args.hf_requests]
    encoded = [tok(tok.apply_chat_template(_messages(p), tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False, return_tensors="pt").input_ids.to("cuda") for p in texts]
    with torch.inference_mode():
        model.generate(encoded[0], max_new_tokens=8, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens = 0
        first = ""
        for i, x in enumerate(encoded):  # one prompt at a time, as the baseline is defined
            out = model.generate(x, max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = out[0, x.shape[1]:]
            tokens += int(new.shape[0])
            if i == 0:
                first = tok.decode(new, skip_special_tokens=True)[:200]
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"side": "hf", "requests": len(encoded), "output_tokens": tokens, "wall_s": wall, "load_s": load_s,
            "first": first}


def side_freight(args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(WORK / "data", ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    name = "bench-vllm"
    table = {"backend": "vllm", "model": args.model, "dtype": args.dtype, "max_model_len": args.max_model_len,
             "gpu_memory_utilization": args.gpu_memory_utilization}
    config = WORK / "freight.toml"
    config.write_text(f'[models."{name}"]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    batch, out = WORK / "input.jsonl", WORK / "output.jsonl"
    with batch.open("w") as f:
        for i, p in enumerate(prompts(args.requests)):
            body = {"model": name, "messages": _messages(p), "temperature": 0, "max_tokens": args.max_tokens}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    out.unlink(missing_ok=True)
    freight = Path(sys.executable).parent / "freight"
    t0 = time.perf_counter()
    subprocess.run([str(freight), "run", str(batch), "-o", str(out), "--data-dir", str(WORK / "data"),
                    "--config", str(config)], check=True)
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [x for x in lines if (x.get("response") or {}).get("status_code") == 200]
    tokens = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in ok)
    first = ok[0]["response"]["body"]["choices"][0]["message"]["content"][:200] if ok else ""
    if len(ok) != args.requests:
        raise SystemExit(f"freight: {len(ok)} of {args.requests} requests succeeded; see {out}")
    return {"side": "freight", "requests": len(ok), "output_tokens": tokens, "wall_s": wall, "load_s": None,
            "first": first}


def side_features(args: argparse.Namespace) -> dict[str, Any]:
    """Every parameter family through ``VllmBackend.execute`` on the real engine, each answer checked with the
    openai SDK's models: a functional check to run before trusting the throughput rows."""
    import asyncio

    import jsonschema
    from openai.types import Completion, CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion

    from freight.backends.vllm import VllmBackend

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer",
              "minimum": 1, "maximum": 7}}, "required": ["city", "days"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    ask = _messages("What is the weather in Paris for the next 3 days?")
    chat: list[tuple[str, dict[str, Any], Any]] = [
        ("plain", {"max_tokens": 32}, lambda c: c.choices[0].message.content),
        ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
                         "max_tokens": 64}, lambda c: jsonschema.validate(json.loads(c.choices[0].message.content),
                                                                          schema) or True),
        ("json_object", {"response_format": {"type": "json_object"}, "max_tokens": 64},
         lambda c: isinstance(json.loads(c.choices[0].message.content), dict)),
        ("forced tool", {"tools": tools, "tool_choice": "required", "max_tokens": 64},
         lambda c: c.choices[0].message.tool_calls[0].function.name == "get_weather"),
        ("named tool", {"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                        "max_tokens": 64}, lambda c: c.choices[0].finish_reason == "tool_calls"),
        ("auto tools", {"tools": tools, "max_tokens": 64}, lambda c: c.choices[0].finish_reason),
        ("logprobs", {"logprobs": True, "top_logprobs": 3, "max_tokens": 8},
         lambda c: all(len(t.top_logprobs) == 3 for t in c.choices[0].logprobs.content)),
        ("n=3 seed stop", {"n": 3, "seed": 7, "temperature": 0.9, "stop": ["."], "max_tokens": 32},
         lambda c: len(c.choices) == 3),
        ("penalties bias top_k", {"presence_penalty": 1.0, "frequency_penalty": 0.5, "top_k": 20, "top_p": 0.9,
                                  "logit_bias": {"0": -100}, "max_tokens": 16}, lambda c: c.usage.completion_tokens),
    ]

    async def run() -> dict[str, Any]:
        backend = VllmBackend(model_id="m", model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                              gpu_memory_utilization=args.gpu_memory_utilization)
        await backend.start()
        report: dict[str, Any] = {}
        try:
            bodies = [{"model": "m", "messages": ask, **extra} for _, extra, _ in chat]
            bodies += [{"model": "m", "messages": ask, "frobnicate": 1},
                       {"model": "m", "messages": _messages("word " * (args.max_model_len + 10))}]
            results = await backend.execute("/v1/chat/completions", bodies)
            for (name, _, check), r in zip(chat, results, strict=False):
                try:
                    assert getattr(r, "status_code", None) == 200, r
                    verdict = check(ChatCompletion.model_validate(json.loads(r.body)))
                    report[name] = "PASS" if verdict not in (None, False) else "FAIL (check)"
                except Exception as e:
                    report[name] = f"FAIL {type(e).__name__}: {e}"[:300]
            report["unsupported -> 400"] = "PASS" if getattr(results[-2], "status_code", 0) == 400 else "FAIL"
            report["too long -> 400"] = "PASS" if getattr(results[-1], "status_code", 0) == 400 else "FAIL"
            (done,) = await backend.execute("/v1/completions", [{"model": "m", "prompt": ["Once upon", "A"],
                                                                 "echo": True, "n": 2, "max_tokens": 8}])
            try:
                c = Completion.model_validate(json.loads(done.body))  # type: ignore[union-attr]
                report["completions echo n"] = "PASS" if len(c.choices) == 4 and c.choices[0].text.startswith(
                    "Once upon") else "FAIL"
            except Exception as e:
                report["completions echo n"] = f"FAIL {type(e).__name__}: {e}"[:300]
        finally:
            await backend.close()
        if args.embed_model:
            embed = VllmBackend(model_id="e", model=args.embed_model, task="embed",
                                gpu_memory_utilization=args.gpu_memory_utilization)
            await embed.start()
            try:
                (r,) = await embed.execute("/v1/embeddings", [{"model": "e", "input": ["a cat", "a dog"]}])
                e = CreateEmbeddingResponse.model_validate(json.loads(r.body))  # type: ignore[union-attr]
                report["embeddings"] = "PASS" if len(e.data) == 2 and len(e.data[0].embedding) > 0 else "FAIL"
            except Exception as ex:
                report["embeddings"] = f"FAIL {type(ex).__name__}: {ex}"[:300]
            finally:
                await embed.close()
        return report

    report = asyncio.run(run())
    for name, verdict in report.items():
        print(f"  {name:24} {verdict}", file=sys.stderr, flush=True)
    return {"side": "features", "checks": report}


SIDES = {"vllm": side_vllm, "hf": side_hf, "freight": side_freight, "features": side_features}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a local path, or a Hugging Face id when the hub is reachable")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--hf-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--sides", default="features,hf,vllm,freight")
    ap.add_argument("--embed-model", help="an embedding model for the features side (task = \"embed\")")
    ap.add_argument("--side", help=argparse.SUPPRESS)  # a child process runs one side
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(SIDES[args.side](args)), flush=True)
        return
    results: dict[str, dict[str, Any]] = {}
    for side in args.sides.split(","):
        cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"{side}: failed (exit {proc.returncode})", file=sys.stderr)
            continue
        r = results[side] = json.loads(found[-1][len("RESULT "):])
        if side == "features":
            failed = [k for k, v in r["checks"].items() if not v.startswith("PASS")]
            print(f"features: {len(r['checks']) - len(failed)} of {len(r['checks'])} checks pass"
                  + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
            continue
        r["tok_s"] = r["output_tokens"] / r["wall_s"]
        load = f", load {r['load_s']:.1f} s" if r["load_s"] is not None else " (load included)"
        print(f"{side:8} {r['requests']:5} requests {r['output_tokens']:7} tokens {r['wall_s']:8.2f} s "
              f"{r['tok_s']:9.1f} tok/s{load}\n         first: {r['first']!r}", flush=True)
    if "vllm" in results and "hf" in results:
        print(f"vllm / hf (one prompt at a time): {results['vllm']['tok_s'] / results['hf']['tok_s']:.1f}x")
    if "vllm" in results and "freight" in results:
        print(f"freight / vllm: {results['freight']['tok_s'] / results['vllm']['tok_s']:.2f} (freight includes "
              "model load, the store and the output file)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
