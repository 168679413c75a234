"""Client commands against a freight (or any OpenAI-compatible) server over HTTP."""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Column, Table

from freight.cli.figures import freight_rows, live_note
from freight.cli.progress import BatchProgress, console, stdout_console
from freight.domain.batches import describe_problem
from freight.wire import jsonx

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class ApiError(click.ClickException):
    exit_code = 1


def _client(url: str | None, api_key: str | None) -> httpx.Client:
    import httpx  # (here: the other commands need no HTTP client of their own, and it takes ~0.1 s to import)

    base = (url or os.environ.get("FREIGHT_URL") or DEFAULT_URL).rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    key = api_key or os.environ.get("FREIGHT_API_KEY")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key or NO_KEY}"},
                        timeout=httpx.Timeout(600, connect=5))


#: What is sent when no key is given (a server without keys takes any); a 401 then says so.
NO_KEY = "freight"


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = error["message"]
        except Exception:
            message = response.text[:500]
        if response.status_code == 401 and response.request.headers.get("authorization") == f"Bearer {NO_KEY}":
            message = "this server needs an API key, and none was given: pass --api-key or set FREIGHT_API_KEY"
        raise ApiError(f"HTTP {response.status_code}: {message}")
    return response.json()


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import httpx

    try:
        return _check(fn(*args, **kwargs))
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the server: {exc}") from None


url_option = click.option("--url", default=None, help=f"Server URL (env: FREIGHT_URL; default {DEFAULT_URL}).")
key_option = click.option("--api-key", default=None, help="API key (env: FREIGHT_API_KEY).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON object.")


def _ts(value: int | None) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _download(client: httpx.Client, file_id: str | None, dest: Path) -> Path | None:
    import httpx

    if not file_id:
        return None
    tmp = dest.with_name(dest.name + ".part")
    try:
        with client.stream("GET", f"/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            with open(tmp, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise ApiError(f"download failed: {exc}") from None
    os.replace(tmp, dest)
    return dest


def _download_batch(client: httpx.Client, batch: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, suffix in (("output_file_id", "output"), ("error_file_id", "errors")):
        path = _download(client, batch.get(key), out_dir / f"{batch['id']}_{suffix}.jsonl")
        if path is not None:
            paths.append(path)
    return paths


def _summary(batch: dict[str, Any]) -> str:
    c = batch["request_counts"]
    return f"{batch['id']} {batch['status']}: {c['completed']} succeeded, {c['failed']} failed of {c['total']}"


def parse_metadata(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str] | None:
    """``--metadata K=V`` (repeatable) as a dict; None when not given. A value may be empty or hold '='."""
    meta: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx, param)
        if key in meta:
            raise click.BadParameter(f"key {key!r} given twice ({meta[key]!r} and {value!r})", ctx, param)
        meta[key] = value
    return meta or None


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """inf and nan pass FloatRange but no JSON body can carry them: a usage error before anything is uploaded
    (it uploaded the file, then failed with "Out of range float values are not JSON compliant")."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of dollars.")
    return value


@click.command()
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--endpoint", default=None, help="Batch endpoint (default: the url of the input's lines).")
@click.option("--completion-window", default="24h", show_default=True)
@click.option("--metadata", "metadata", multiple=True, callback=parse_metadata,
              help="KEY=VALUE, repeatable (the server checks OpenAI's limits: 16 pairs, keys up to 64 "
                   "characters, values up to 512).")
@click.option("--wait", is_flag=True, help="Show a live progress bar, then download the results.")
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
              help="Spending cap: no request starts once the batch has cost this much (docs/cost.md).")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where --wait puts the output and error files.")
@url_option
@key_option
def submit(input_path: Path, endpoint: str | None, completion_window: str, metadata: dict[str, str] | None, wait: bool,
           max_cost_usd: float | None, output_dir: Path, url: str | None, api_key: str | None) -> None:
    """Upload INPUT.jsonl and create a batch; print its id."""
    from freight.cli.local_run import infer_endpoint

    endpoint = endpoint or infer_endpoint(input_path)
    with _client(url, api_key) as client, open(input_path, "rb") as fh:
        f = _call(client.post, "/files", files={"file": (input_path.name, fh, "application/jsonl")},
                  data={"purpose": "batch"})
        body = {"input_file_id": f["id"], "endpoint": endpoint, "completion_window": completion_window,
                "metadata": metadata}
        if max_cost_usd is not None:
            body["max_cost_usd"] = max_cost_usd
        batch = _call(client.post, "/batches", json=body)
        if not wait:
            click.echo(batch["id"])
            return
        console.print(f"submitted {batch['id']}")
        with BatchProgress(input_path.name) as bar:
            while batch["status"] not in TERMINAL:
                c = batch["request_counts"]
                bar.update(batch["status"], c["total"], c["completed"], c["failed"], live_note(batch))
                time.sleep(0.5)
                batch = _call(client.get, f"/batches/{batch['id']}")
            c = batch["request_counts"]
            bar.update(batch["status"], c["total"], c["completed"], c["failed"], live_note(batch))
        console.print(_summary(batch))
        _report_errors(batch)
        for path in _download_batch(client, batch, output_dir):
            console.print(f"  {path}")
        click.echo(batch["id"])
        if batch["status"] == "failed":
            sys.exit(1)
        if batch["request_counts"]["failed"]:
            sys.exit(3)


def _report_errors(batch: dict[str, Any], to: Console = console) -> None:
    for e in (batch.get("errors") or {}).get("data", []):
        to.print("  " + describe_problem(e.get("line"), e["code"], e.get("param"), e["message"]), soft_wrap=True,
                 markup=False, highlight=False)


@click.command()
@click.argument("batch_id")
@url_option
@key_option
@json_option
def status(batch_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Show one batch."""
    with _client(url, api_key) as client:
        batch = _call(client.get, f"/batches/{batch_id}")
    if as_json:
        click.echo(jsonx.dumps(batch).decode())
        return
    c = batch["request_counts"]
    table = Table(show_header=False, box=None)
    for key, value in (
        ("id", batch["id"]), ("status", batch["status"]), ("endpoint", batch["endpoint"]),
        ("model", batch["model"] or "-"), ("requests", f"{c['completed']} succeeded, {c['failed']} failed "
                                                       f"of {c['total']}"),
        ("created", _ts(batch["created_at"])), ("expires", _ts(batch["expires_at"])),
        ("output file", batch["output_file_id"] or "-"), ("error file", batch["error_file_id"] or "-"),
        *freight_rows(batch),
    ):
        table.add_row(f"[bold]{key}[/bold]", str(value))
    out = stdout_console()
    out.print(table)
    _report_errors(batch, out)


@click.command(name="list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@url_option
@key_option
@json_option
def list_(limit: int, url: str | None, api_key: str | None, as_json: bool) -> None:
    """List batches, newest first."""
    with _client(url, api_key) as client:
        page = _call(client.get, "/batches", params={"limit": limit})
    if as_json:
        click.echo(jsonx.dumps(page).decode())
        return
    # (The id never wraps: it is what a user copies from the list.)
    table = Table(Column("id", no_wrap=True), "status", "endpoint", "done", "failed", "total", "created")
    for b in page["data"]:
        c = b["request_counts"]
        table.add_row(b["id"], b["status"], b["endpoint"], str(c["completed"]), str(c["failed"]), str(c["total"]),
                      _ts(b["created_at"]))
    stdout_console().print(table)


@click.command()
@click.argument("batch_id")
@url_option
@key_option
def cancel(batch_id: str, url: str | None, api_key: str | None) -> None:
    """Cancel a batch: nothing new starts; finished results are kept."""
    with _client(url, api_key) as client:
        batch = _call(client.post, f"/batches/{batch_id}/cancel")
    click.echo(_summary(batch))


@click.command()
@click.argument("batch_id")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True)
@click.option("--partial", is_flag=True,
              help="While it runs: the lines finished so far, in input order, to BATCH_partial.jsonl.")
@url_option
@key_option
def download(batch_id: str, output_dir: Path, partial: bool, url: str | None, api_key: str | None) -> None:
    """Download a batch's output and error files (or, with --partial, its lines finished so far)."""
    with _client(url, api_key) as client:
        batch = _call(client.get, f"/batches/{batch_id}")
        if partial:
            _download_partial(client, batch_id, output_dir)
            return
        paths = _download_batch(client, batch, output_dir)
    console.print(_summary(batch))
    if not paths:
        console.print("no result files yet" if batch["status"] not in TERMINAL else "the batch has no result files")
    for path in paths:
        click.echo(str(path))


def _download_partial(client: httpx.Client, batch_id: str, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    dest = output_dir / f"{batch_id}_partial.jsonl"
    after, lines, through = -1, 0, -1
    with open(dest, "wb") as fh:
        while True:
            r = client.get(f"/batches/{batch_id}/partial", params={"after": after, "limit": 10_000})
            if r.status_code >= 400:
                _check(r)
            fh.write(r.content)
            lines += int(r.headers["freight-lines"])
            if after == through:
                through = int(r.headers["freight-complete-through"])
            if r.headers.get("freight-has-more") != "true":
                break
            after = int(r.headers["freight-last-index"])
    console.print(f"{lines} finished lines; every request through input line {through + 1} has finished")
    click.echo(str(dest))


def _control(batch_id: str, action: str, url: str | None, api_key: str | None,
             body: dict[str, Any] | None = None) -> None:
    with _client(url, api_key) as client:
        batch = _call(client.post, f"/batches/{batch_id}/{action}", json=body or {})
    ext = batch.get("freight") or {}
    paused = f"paused since {_ts(ext['paused_at'])}" if ext.get("paused_at") else "not paused"
    click.echo(f"{_summary(batch)}; priority {ext.get('priority', 0)}, {paused}")


@click.command()
@click.argument("batch_id")
@url_option
@key_option
def pause(batch_id: str, url: str | None, api_key: str | None) -> None:
    """Pause a batch: no new request starts (those queued in a model go back to waiting); running ones finish.
    Its completion window keeps running."""
    _control(batch_id, "pause", url, api_key)


@click.command()
@click.argument("batch_id")
@url_option
@key_option
def resume(batch_id: str, url: str | None, api_key: str | None) -> None:
    """Resume a paused batch."""
    _control(batch_id, "resume", url, api_key)


@click.command(context_settings={"ignore_unknown_options": True})  # (so "-5" is a priority, not an option)
@click.argument("batch_id")
@click.argument("priority", type=click.IntRange(-1000, 1000))
@url_option
@key_option
def priority(batch_id: str, priority: int, url: str | None, api_key: str | None) -> None:
    """Set a batch's priority (higher runs first within its project; -1000..1000, default 0)."""
    _control(batch_id, "priority", url, api_key, {"priority": priority})


client_commands = [submit, status, list_, cancel, download, pause, resume, priority]
