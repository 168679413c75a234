"""Preview latency: ``freight preview -n 10`` (validation, the 10 requests on the configured backend
with its output checks, extrapolation) vs the same 10 requests sent at once straight to the
real-time endpoint (the OpenAI-compatible upstream simulator, 300 ms a request)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx

from bench.common import WORK, Row, fmt_s
from freight.testing.upstream import Upstream, UpstreamConfig

N = 10
LINES = 2000


def _bodies() -> list[dict[str, object]]:
    return [{"model": "sim", "max_tokens": 32, "response_format": {"type": "json_object"} if i % 2 else None,
             "messages": [{"role": "user", "content": f"Label ticket {i}: the printer is on fire"}]}
            for i in range(LINES)]


def _write(path: Path) -> None:
    with open(path, "w") as fh:
        for i, body in enumerate(_bodies()):
            clean = {k: v for k, v in body.items() if v is not None and k != "response_format"}
            fh.write(json.dumps({"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": clean}) + "\n")


async def _direct(base_url: str) -> float:
    bodies = [{k: v for k, v in b.items() if v is not None and k != "response_format"} for b in _bodies()[:N]]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/chat/completions", json=b) for b in bodies))
        elapsed = time.perf_counter() - started
    assert all(a.status_code == 200 for a in answers)
    return elapsed


def _preview(path: Path, config: Path) -> tuple[float, float]:
    """(the whole preview, its 10 requests alone), seconds."""
    from freight.cli.preview import preview, preview_settings
    from freight.config import load_settings
    from freight.runtime import build_catalog

    settings = load_settings(config, env={})
    catalog = build_catalog(preview_settings(settings, N))
    started = time.perf_counter()
    out = io.StringIO()
    with redirect_stdout(out):
        preview(settings, catalog, path, "/v1/chat/completions", N, "first", None, True)
    rate = json.loads(out.getvalue())["extrapolation"]["requests_per_s"]
    return time.perf_counter() - started, N / rate


def run() -> list[Row]:
    WORK.mkdir(parents=True, exist_ok=True)
    path, config = WORK / "preview.jsonl", WORK / "preview.toml"
    _write(path)
    with Upstream(UpstreamConfig(latency_s=0.3)) as up:
        config.write_text(f'[models."sim"]\nbackend = "openai"\nbase_url = "{up.base_url}"\n'
                          'price = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n')
        direct = min(asyncio.run(_direct(up.base_url)) for _ in range(3))
        runs = [_preview(path, config) for _ in range(3)]
    whole, requests = min(r[0] for r in runs), min(r[1] for r in runs)
    return [Row(f"preview {N} of {LINES} lines (300 ms upstream)", "wall time", fmt_s(whole), fmt_s(direct),
                f"{whole / direct:.2f}x", "<= 1.20x", whole / direct <= 1.2),
            Row(f"preview {N} of {LINES} lines (300 ms upstream)", "its 10 requests", fmt_s(requests),
                fmt_s(direct), f"{requests / direct:.2f}x", "<= 1.20x", requests / direct <= 1.2)]


if __name__ == "__main__":
    for row in run():
        print(row)
