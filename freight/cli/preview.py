"""``freight preview FILE [-n 10] [--pick first|random] [--seed S] [--json]``: try a batch file on a few lines.

The whole file is validated as a batch would be (freight/wire/batch_input.py), and N of its lines
run now, at once (with ``--pick first`` while the rest of the file is still being validated; a file with
a problem in those first lines runs nothing), on the configured backends a batch uses (with the same output check,
freight/backends/output_check.py). Each line is shown input beside output, with its tokens, latency
and check; then the whole file is extrapolated from them: tokens, cost at batch and at real-time
prices, and duration at the preview's measured rate. Exit status 1 when a previewed line failed or the
file would fail validation.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from freight.cli.figures import usd
from freight.cli.progress import console
from freight.config import Settings
from freight.domain import pricing
from freight.domain.errors import InvalidInput
from freight.domain.requests import Failure, Outcome, Result
from freight.services.batches import check_endpoint
from freight.services.catalog import ModelCatalog
from freight.services.outputs import requested_check
from freight.wire import jsonx
from freight.wire.batch_input import BatchInputValidator, LineProblem, ValidRequest, iter_lines
from freight.wire.results_table import answer_of, row_of


@dataclass
class Previewed:
    request: ValidRequest
    body: dict[str, Any]
    result: Result | Failure
    latency_s: float

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Result) and self.result.outcome is Outcome.SUCCEEDED

    def error(self) -> tuple[str | None, str | None]:
        """The failure's code and message: as ``freight results`` reads them from the error file's line."""
        r = self.result
        if isinstance(r, Failure):
            return r.code, r.message
        if r.error_code is not None or self.ok:
            return r.error_code, r.error_message
        try:
            body = jsonx.loads(r.body) if r.body else None
        except jsonx.JSONDecodeError:
            body = None
        row = row_of({"response": {"status_code": r.status_code, "body": body}}, self.body, None)
        code = row["error_code"] if row["error_code"] != f"http_{r.status_code}" else None
        return code, row["error_message"] if isinstance(row["error_message"], str) else None

    def check(self, endpoint: str) -> str:
        if self.ok:
            return "schema ok" if requested_check(endpoint, self.body, None) is not None else "ok"
        code, message = self.error()
        status = self.result.status_code if isinstance(self.result, Result) else None
        parts = ["failed", *([f"HTTP {status}"] if status is not None else []), code, message]
        return ": ".join(p for p in parts if p)

    def row(self, endpoint: str) -> dict[str, Any]:
        r = self.result
        answer = None
        if isinstance(r, Result) and self.ok and r.body:
            answer = answer_of(jsonx.loads(r.body), self.body)
        error_code, error_message = self.error()
        return {"line": self.request.line, "custom_id": self.request.custom_id, "input": self.body,
                "answer": answer, "ok": self.ok, "check": self.check(endpoint),
                "error_code": error_code, "error_message": error_message,
                "input_tokens": r.input_tokens if isinstance(r, Result) else 0,
                "output_tokens": r.output_tokens if isinstance(r, Result) else 0,
                "latency_s": round(self.latency_s, 4)}


def preview_settings(settings: Settings, n: int) -> Settings:
    """The settings to preview ``n`` lines with: an HTTP model keeps no more than ``n`` connections
    (its pools are made at start, and 256 of them take seconds to set up for 10 requests), and sends
    all ``n`` at once (its window starts at ``n`` instead of slow start's 8: a preview is what a
    real-time client would send)."""
    for table in settings.models.values():
        if table.get("backend") == "openai":
            current = table.get("max_concurrency")
            table["max_concurrency"] = min(current, n) if isinstance(current, int) else n
            table["initial_concurrency"] = table["max_concurrency"]
    return settings


def endpoint_refusal(path: Path, endpoint: str, max_line_bytes: int) -> LineProblem | None:
    """What creating the batch answers when freight has no batch endpoint ``endpoint``, before its lines
    are read (``check_endpoint``, the check creating the batch makes: its code and message). The problem of the
    file's first line with a url when the endpoint is that url (freight/cli/local_run.py's
    ``infer_endpoint``); else, as ``freight run --endpoint`` and ``submit``, an error. None when served."""
    try:
        check_endpoint(endpoint)
        return None
    except InvalidInput as refused:
        problem = refused
    with open(path, "rb") as fh:
        for raw in iter_lines(fh, max_line_bytes):
            try:
                obj = jsonx.loads(raw.data) if raw.data and raw.data.strip() else None
            except jsonx.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("url"), str):
                if obj["url"] == endpoint:
                    return LineProblem(raw.line, problem.code or "invalid_value", problem.message, "url")
                break
    raise problem


def pick(requests: list[ValidRequest], n: int, how: str, seed: int | None) -> list[ValidRequest]:
    if how == "random":
        return sorted(random.Random(seed).sample(requests, min(n, len(requests))), key=lambda r: r.line)
    return requests[:n]


async def run_lines(catalog: ModelCatalog, endpoint: str, picked: list[ValidRequest]) -> tuple[list[Previewed], float]:
    async def one(request: ValidRequest) -> Previewed:
        body = jsonx.loads(request.body)
        backend = catalog.backend_for(str(request.model))
        started = time.perf_counter()
        if backend is None:
            return Previewed(request, body, Failure("model_not_found", "not run here (a batch lane model)"), 0.0)
        try:
            (result,) = await backend.execute(endpoint, [body])
        except Exception as exc:  # as the engine: a backend that raises is that request's failure
            result = Failure("backend_error", f"{type(exc).__name__}: {exc}")
        return Previewed(request, body, result, time.perf_counter() - started)

    for model in {str(r.model) for r in picked}:
        backend = catalog.backend_for(model)
        if backend is not None:
            await backend.start()
    started = time.perf_counter()
    done = await asyncio.gather(*(one(r) for r in picked))
    return list(done), time.perf_counter() - started


def extrapolate(settings: Settings, model: str | None, total: int, done: list[Previewed],
                wall_s: float) -> dict[str, Any]:
    n = len(done)
    tokens_in = sum(p.result.input_tokens for p in done if isinstance(p.result, Result))
    tokens_out = sum(p.result.output_tokens for p in done if isinstance(p.result, Result))
    scale = total / n if n else 0
    tokens = pricing.Tokens(input=round(tokens_in * scale), output=round(tokens_out * scale))
    rate = n / wall_s if wall_s > 0 and n else None
    duration = total / rate if rate else None
    model_pricing = settings.price_book().for_model(model)
    return {"requests": total, "input_tokens": tokens.input, "output_tokens": tokens.output,
            "cost_usd": model_pricing.cost_usd(tokens, busy_s=duration),
            "realtime_cost_usd": model_pricing.realtime_usd(tokens),
            "requests_per_s": rate, "duration_s": None if duration is None else round(duration, 1)}


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else jsonx.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _input_text(body: dict[str, Any]) -> Any:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("content")
    return body.get("input", body.get("prompt", body))


def preview(settings: Settings, catalog: ModelCatalog, path: Path, endpoint: str, n: int, how: str,
            seed: int | None, as_json: bool) -> None:
    validator = BatchInputValidator(endpoint=endpoint, model_check=catalog.check, limits=settings.input_limits)
    refused = endpoint_refusal(path, endpoint, settings.input_limits.max_line_bytes)
    if refused is not None:
        validator.refuse(refused)
        requests: list[ValidRequest] = []
        done: list[Previewed] | None = None
        wall_s = 0.0
    else:
        requests, done, wall_s = asyncio.run(_validate_and_run(settings, validator, catalog, path, endpoint,
                                                               n, how, seed))
    problems = validator.finish()
    if problems or done is None:
        for p in problems:
            click.echo(p.describe(path), err=True)
        ran = "nothing was run" if done is None else f"the {len(done)} previewed lines below ran"
        click.echo(f"the file would fail validation ({validator.problem_count} problem(s)); {ran}", err=True)
        if done is None:
            sys.exit(1)
    rows = [p.row(endpoint) for p in done]
    summary = extrapolate(settings, validator.model, len(requests), done, wall_s)
    failed = [r for r in rows if not r["ok"]]
    if as_json:
        click.echo(jsonx.dumps({"model": validator.model, "endpoint": endpoint, "lines": rows,
                                "extrapolation": summary, "failed": len(failed)}).decode())
    else:
        table = Table("line", "input", "output", "tokens in/out", "latency", "check")
        for r, previewed in zip(rows, done, strict=True):
            table.add_row(str(r["line"]), _short(_input_text(previewed.body)), _short(r["answer"]),
                          f"{r['input_tokens']}/{r['output_tokens']}", f"{r['latency_s'] * 1000:.0f} ms",
                          r["check"] if r["ok"] else f"[red]{r['check']}[/red]")
        console.print(table)
        duration = summary["duration_s"]
        console.print(
            f"whole file ({summary['requests']} requests, from {len(rows)} previewed): "
            f"~{summary['input_tokens']:,} input + ~{summary['output_tokens']:,} output tokens; "
            f"cost {usd(summary['cost_usd'])} as a batch here, {usd(summary['realtime_cost_usd'])} at real-time "
            f"prices; ~{'?' if duration is None else f'{duration:,.0f}'} s at the measured "
            f"{summary['requests_per_s'] or 0:.2f} requests/s")
    if problems:
        sys.exit(1)
    if failed:
        click.echo(f"{len(failed)} of {len(rows)} previewed lines failed: " +
                   "; ".join(f"line {r['line']}: {r['check']}" for r in failed[:5]), err=True)
        sys.exit(1)


async def _validate_and_run(settings: Settings, validator: BatchInputValidator, catalog: ModelCatalog, path: Path,
                            endpoint: str, n: int, how: str, seed: int | None
                            ) -> tuple[list[ValidRequest], list[Previewed] | None, float]:
    """Validate the whole file and run the picked lines; ``None`` for the run when nothing was run.

    With ``--pick first`` the first ``n`` lines start as soon as they are valid (no earlier line had a
    problem) while a thread validates the rest of the file: the requests spend their time waiting on
    the backend, the validation on the CPU. A problem found later is still reported (exit status 1),
    beside the lines that ran. ``--pick random`` needs every line first."""
    loop = asyncio.get_running_loop()
    requests: list[ValidRequest] = []
    head_ready = asyncio.Event()

    def validate() -> None:
        with open(path, "rb") as fh:
            for raw in iter_lines(fh, settings.input_limits.max_line_bytes):
                request = validator.feed(raw)
                if request is not None:
                    requests.append(request)
                    if how == "first" and len(requests) == n and validator.problem_count == 0:
                        loop.call_soon_threadsafe(head_ready.set)

    validating = asyncio.ensure_future(asyncio.to_thread(validate))
    head = asyncio.ensure_future(head_ready.wait())
    await asyncio.wait([validating, head], return_when=asyncio.FIRST_COMPLETED)
    if not head.done():
        head.cancel()
        await validating  # raises what the validation raised
        if validator.problem_count:
            return requests, None, 0.0
        picked = pick(requests, n, how, seed)
        done, wall_s = await _run_and_close(catalog, endpoint, picked)
        return requests, done, wall_s
    picked = requests[:n]
    running = asyncio.ensure_future(_run_and_close(catalog, endpoint, picked))
    try:
        await validating
    finally:
        done, wall_s = await running
    return requests, done, wall_s


async def _run_and_close(catalog: ModelCatalog, endpoint: str,
                         picked: list[ValidRequest]) -> tuple[list[Previewed], float]:
    try:
        return await run_lines(catalog, endpoint, picked)
    finally:
        for backend in catalog.backends:
            await backend.close()
