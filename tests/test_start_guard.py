"""A model that cannot load ends its batches (freight/backends/start_guard.py): found by an audit, a
``model_path`` that did not exist kept its batch ``in_progress`` for ever, a traceback at every retry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from freight.backends.start_guard import StartGuard
from freight.domain.requests import MODEL_UNAVAILABLE as CODE
from freight.domain.requests import Failure, Result
from freight.ports import ModelInfo


class Flaky:
    """Fails to start until ``loadable``."""

    chunk_size = 4
    max_concurrency = 1

    def __init__(self) -> None:
        self.loadable = False
        self.starts = 0

    def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo("m", frozenset({"/v1/chat/completions"}))]

    async def start(self) -> None:
        self.starts += 1
        if not self.loadable:
            raise FileNotFoundError("no such file: m.gguf")

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        return [Result(status_code=200, body=b"{}") for _ in bodies]

    async def close(self) -> None: ...


def test_after_the_last_failed_start_requests_fail_until_the_model_loads() -> None:
    inner, now = Flaky(), [0.0]
    guard = StartGuard(inner, max_failures=3, retry_s=60.0, clock=lambda: now[0])

    async def scenario() -> None:
        for _ in range(2):  # the engine retries these, backing off
            with pytest.raises(FileNotFoundError):
                await guard.start()
        await guard.start()  # the third: the model is unavailable, its requests fail
        (failure,) = await guard.execute("/v1/chat/completions", [{}])
        assert isinstance(failure, Failure) and failure.code == CODE and "m.gguf" in failure.message
        assert inner.starts == 3, "no start again before retry_s"
        inner.loadable = True
        now[0] = 61.0
        (ok,) = await guard.execute("/v1/chat/completions", [{}])
        assert isinstance(ok, Result) and guard.why is None and inner.starts == 4

    asyncio.run(scenario())


def test_freight_run_with_a_model_file_that_does_not_exist_ends(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(f'[models."ghost"]\nbackend = "llama-cpp"\nmodel_path = "{tmp_path / "nope.gguf"}"\n'
                      "[engine]\nmax_attempts = 2\nretry_base_delay_s = 0.1\npoll_interval_s = 0.1\n")
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"model": "ghost", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "hi"}]}}) + "\n"
                             for i in range(3)))
    proc = subprocess.run([sys.executable, "-m", "freight", "run", str(batch), "-o", str(tmp_path / "out.jsonl"),
                           "--errors", str(tmp_path / "err.jsonl"), "--data-dir", str(tmp_path / "data"),
                           "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output  # ended, with failed requests
    assert "Traceback" not in output, "each failed start is one line (the traceback comes with -v)"
    assert "model ghost cannot be loaded (5 tries)" in output
    errors = [json.loads(line) for line in (tmp_path / "err.jsonl").read_text().splitlines()]
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r1", "r2"]
    assert {e["error"]["code"] for e in errors} == {CODE}
    assert "could not load" in errors[0]["error"]["message"] or "nope.gguf" in errors[0]["error"]["message"]
