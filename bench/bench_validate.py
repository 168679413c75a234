"""Validating a 50,000-line, ~100 MB batch file vs merely orjson-parsing every line of it."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import orjson

from bench.common import WORK, Row, fmt_s
from freight.wire.batch_input import BatchInputValidator, InputLimits, iter_lines

LINES = 50_000


def make_input(path: Path, n: int, line_bytes: int = 2000) -> None:
    rng = random.Random(7)
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    with open(path, "w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(line_bytes // 6))
            fh.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "m", "max_tokens": 64, "messages": [
                                     {"role": "system", "content": "You label support tickets."},
                                     {"role": "user", "content": text}]}}) + "\n")


def parse_only(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            orjson.loads(line)
    return time.perf_counter() - started


def validate(path: Path) -> float:
    started = time.perf_counter()
    validator = BatchInputValidator("/v1/chat/completions", lambda model, ep: None, InputLimits())
    with open(path, "rb") as fh:
        for raw in iter_lines(fh, validator.limits.max_line_bytes):
            validator.feed(raw)
    problems = validator.finish()
    assert not problems and validator.request_count == LINES, problems[:3]
    return time.perf_counter() - started


def run() -> list[Row]:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "validate50k.jsonl"
    if not path.exists():
        make_input(path, LINES)
    size_mb = path.stat().st_size / 1e6
    parse_only(path)  # warm the page cache for both
    base = min(parse_only(path) for _ in range(3))
    ours = min(validate(path) for _ in range(3))
    ratio = ours / base
    return [Row(f"validate {LINES} lines / {size_mb:.0f} MB", "wall time", fmt_s(ours), fmt_s(base),
                f"{ratio:.2f}x", "<= 3.00x", ratio <= 3.0)]


if __name__ == "__main__":
    for row in run():
        print(row)
