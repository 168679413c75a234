"""``freight``: serve, work, run a local batch, validate a file, and drive a server.

Exit status: 0 success; 1 an error (or a batch that failed validation); 2 a usage error;
3 a batch that finished with failed requests; 130 interrupted (run it again to resume).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from freight import __version__
from freight.cli.client import client_commands
from freight.cli.figures import live_note
from freight.cli.keys import keys
from freight.cli.logs import FORMATS, LEVELS, resolve_format, setup_logging
from freight.cli.options import blobs_option, config_option, data_dir_option, database_url_option, redis_url_option
from freight.cli.options import load as _settings
from freight.cli.progress import BatchProgress, console
from freight.cli.results import results
from freight.cli.show_config import config_command, without_password
from freight.domain.batches import TERMINAL, BatchStatus
from freight.domain.errors import ConfigError, FreightError, InvalidInput
from freight.domain.keys import DEFAULT_PROJECT
from freight.domain.secrets import redact_url
from freight.domain.windows import check_schedule
from freight.wire import jsonx, openai
from freight.wire.batch_input import BatchInputValidator, iter_lines


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="freight")
@click.option("-v", "--verbose", is_flag=True, help="Log more, and show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """freight: the bulk lane for AI work (OpenAI-compatible batch inference)."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    try:
        setup_logging(logging.INFO if verbose else logging.WARNING)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


log_format_option = click.option(
    "--log-format", type=click.Choice(FORMATS), default=None,
    help="text, or json: one JSON object per line (env: FREIGHT_LOG_FORMAT; default text).")
log_level_option = click.option(
    "--log-level", type=click.Choice(LEVELS), default=None,
    help="info (default): an access line per request and a line per batch transition; "
         "debug (also -v): why each request failed.")


def _setup_process_logs(ctx: click.Context, log_format: str | None, log_level: str | None) -> str:
    """Logging for a long-running process (serve, worker); returns the format."""
    level = log_level or ("debug" if ctx.obj.get("verbose") else "info")
    fmt = resolve_format(log_format)
    setup_logging(level, fmt)
    return fmt


@cli.command()
@click.option("--host", default=None, help="Address to bind (env: FREIGHT_HOST; default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (env: FREIGHT_PORT; default 8080).")
@log_format_option
@log_level_option
@click.option("--no-worker", is_flag=True,
              help="Serve the API alone: no engine in this process (run `freight worker` beside it).")
@data_dir_option
@database_url_option
@config_option
@blobs_option
@redis_url_option
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, log_format: str | None, log_level: str | None,
          no_worker: bool, data_dir: Path | None, database_url: str | None, config: Path | None,
          blobs: str | None, redis_url: str | None) -> None:
    """Start the HTTP server (OpenAI Files + Batches API) with an embedded worker."""
    import uvicorn

    fmt = _setup_process_logs(ctx, log_format, log_level)
    level = log_level or ("debug" if ctx.obj.get("verbose") else "info")
    # With JSON logs every line of the output is a JSON object: the banner too.
    say = console.print if fmt == "text" else logging.getLogger("freight.cli").info

    from freight.api.app import create_app
    from freight.runtime import build_runtime, tune_gc

    settings = _settings(config, data_dir, host=host, port=port, blobs=blobs, database_url=database_url,
                         redis_url=redis_url)
    runtime = build_runtime(settings)
    tune_gc()
    try:
        with_keys = runtime.keys.required()
        if not with_keys and not is_loopback(settings.host):
            where = (f"--database-url {without_password(settings.database_url)}" if settings.database_url
                     else f"--data-dir {settings.data_dir}")
            raise ConfigError(
                f"refusing to serve on {settings.host}: this {'database' if settings.database_url else 'data dir'} "
                "has no API keys, so anyone who can reach the port could use it. Without keys freight binds to "
                f"loopback only (127.0.0.1, ::1, localhost). Create a key first: freight keys create --project NAME "
                f"{where}")
    except BaseException:
        runtime.close()
        raise
    app = create_app(runtime, run_engine=not no_worker)
    models = ", ".join(m.id for m in runtime.catalog.models())
    say(f"freight {__version__} serving http://{settings.host}:{settings.port}/v1 "
        f"({_where(settings)}; models: {models}" + ("; no worker)" if no_worker else ")"))
    say(f"dashboard: http://{settings.host}:{settings.port}/dashboard")
    if with_keys:
        projects = sorted({k.project for k in runtime.keys.list() if k.revoked_at is None})
        say(f"API keys required ({len(projects)} project(s): {', '.join(projects)})")
    else:
        say(f"no API keys: loopback only, every request is in project '{DEFAULT_PROJECT}' "
            "(make keys with: freight keys create --project NAME)")
    try:
        # log_config=None: uvicorn keeps the logging set up above; its access log is off (ours has the project).
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, log_level=level,
                    access_log=False, timeout_graceful_shutdown=10)
    finally:
        runtime.close()


@cli.command()
@log_format_option
@log_level_option
@data_dir_option
@database_url_option
@config_option
@blobs_option
@redis_url_option
@click.pass_context
def worker(ctx: click.Context, log_format: str | None, log_level: str | None, data_dir: Path | None,
           database_url: str | None, config: Path | None, blobs: str | None, redis_url: str | None) -> None:
    """Run a worker alone (no HTTP): the engine, with the models of its own --config.

    Any number of workers (and `freight serve`s) may share one data dir; each runs requests of
    the models it serves, and one of them at a time runs the batch steps (docs/deployment.md).
    Stop it with Ctrl-C or SIGTERM: the requests it was running go back to pending for others to run.
    """
    from freight.runtime import build_runtime, tune_gc

    fmt = _setup_process_logs(ctx, log_format, log_level)
    say = console.print if fmt == "text" else logging.getLogger("freight.cli").info
    settings = _settings(config, data_dir, blobs=blobs, database_url=database_url, redis_url=redis_url)
    runtime = build_runtime(settings)
    tune_gc()
    models = ", ".join(m.id for m in runtime.catalog.models())
    say(f"freight {__version__} worker {runtime.engine.owner} ({_where(settings)}; models: {models})")
    try:
        asyncio.run(_work(runtime))
    finally:
        runtime.close()


async def _work(runtime: Any) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from freight.intake.runner import run_intakes

    intakes = asyncio.create_task(run_intakes(runtime.intakes, stop)) if runtime.intakes else None
    try:
        await runtime.run(stop)
    finally:
        stop.set()
        if intakes is not None:
            await intakes
        for backend in runtime.catalog.backends:
            await backend.close()


def _where(settings: Any) -> str:
    """Where a process keeps its batches, for its start-up line (a URL's password masked)."""
    store = f"database: {redact_url(settings.database_url)}" if settings.database_url else f"data: {settings.data_dir}"
    return store + (f"; files: {redact_url(settings.blobs)}" if settings.blobs else "")


@cli.command()
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the output lines (succeeded requests), in input order.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the error lines (default: OUTPUT with .errors.jsonl).")
@click.option("--endpoint", default=None, help="The batch endpoint (default: the url of the input's lines).")
@click.option("--completion-window", default="30d", show_default=True, help="Deadline for the whole batch.")
@data_dir_option
@database_url_option
@config_option
@blobs_option
def run(input_path: Path, output_path: Path, errors_path: Path | None, endpoint: str | None,
        completion_window: str, data_dir: Path | None, database_url: str | None, config: Path | None,
        blobs: str | None) -> None:
    """Run a batch file locally, durably: interrupted, the same command resumes it."""
    from freight.cli import local_run
    from freight.config import default_data_dir
    from freight.runtime import build_runtime, tune_gc

    if errors_path is None:
        name = output_path.name.removesuffix(".jsonl")
        errors_path = output_path.with_name(name + ".errors.jsonl")
    for path, option in ((output_path, "-o/--output"), (errors_path, "--errors")):
        if (why := local_run.unwritable(path)) is not None:
            raise click.BadParameter(f"cannot write {path}: {why}.", param_hint=option)
    # Its own data dir unless one is configured, so that a run does not wait on a server's engine.lock.
    settings = _settings(config, data_dir, blobs=blobs, database_url=database_url,
                         default_dir=default_data_dir() / "run")
    endpoint = endpoint or local_run.infer_endpoint(input_path)
    started = time.monotonic()
    runtime = build_runtime(settings, exclusive=True)  # a local run is alone on its data dir
    tune_gc()
    try:
        try:
            batch, resumed = local_run.prepare(runtime, input_path, output_path, endpoint, completion_window)
        except InvalidInput as exc:
            if exc.code == "invalid_file_format":  # (the upload's check; the batch's own checks come later)
                exc.message += f" `freight validate {input_path}` lists every problem of the file."
            raise
        finished_before = resumed and batch.status in TERMINAL
        if finished_before:
            console.print(f"{batch.id} finished in an earlier run of this command ({batch.status}): nothing runs "
                          "now; its files are written again")
        done_before, cached_before = 0, batch.cached
        if resumed and not finished_before:
            counts = batch.request_counts
            done_before = counts.completed + counts.failed
            console.print(f"resuming {batch.id} ({batch.status}, {done_before}/{counts.total} done)")
        with BatchProgress(input_path.name) as bar:
            def show(b: Any) -> None:
                c = b.request_counts
                note = live_note(openai.batch_object(b, runtime.cost.freight_object(b)))
                bar.update(str(b.status), c.total, c.completed, c.failed, note)

            batch = asyncio.run(local_run.run_batch(runtime, batch.id, show))
        local_run.deliver(runtime, batch, output_path, errors_path)
    finally:
        runtime.close()
    elapsed = time.monotonic() - started
    counts = batch.request_counts
    if batch.status not in TERMINAL:
        console.print(f"interrupted: {batch.id} is {batch.status}; run the same command again to resume.")
        sys.exit(130)
    if batch.status is BatchStatus.FAILED:
        console.print(f"[red]batch {batch.id} failed validation:[/red]")
        for e in batch.errors or []:
            console.print(f"  {e.describe()}", soft_wrap=True, markup=False, highlight=False)
        sys.exit(1)
    rate = counts.total / elapsed if elapsed > 0 else 0.0
    took = "" if finished_before else f" in {elapsed:.1f}s"
    pace = "" if finished_before else f" ({rate:.0f} requests/s)"
    console.print(f"[bold]{batch.status}[/bold] {batch.id}{took}: {counts.total} requests, "
                  f"{counts.completed} succeeded, {counts.failed} failed{pace}", soft_wrap=True)
    if not finished_before:  # what this run did (a resumed run: since it resumed)
        reused, unsent = batch.cached - cached_before, local_run.never_sent(errors_path)
        ran = counts.completed + counts.failed - done_before - reused - unsent
        console.print(f"  reused: {reused} from the result cache, ran: {ran}"
                      + (f", never sent: {unsent} (the batch was {batch.status} first)" if unsent else ""),
                      soft_wrap=True)
    console.print(f"  output: {output_path}", soft_wrap=True)
    console.print(f"  errors: {errors_path}", soft_wrap=True)
    print(output_path)  # stdout: the one machine-readable line (the summary above goes to stderr)
    if counts.failed:
        sys.exit(3)


@cli.command()
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--endpoint", default=None, help="The batch endpoint (default: the url of the input's lines).")
@click.option("--estimate", is_flag=True, help="Also print tokens, cost and duration (docs/cost.md).")
@click.option("--json", "as_json", is_flag=True, help="With --estimate: the estimate as one JSON object.")
@click.option("--schedule", type=click.Choice(["off_peak"]), default=None,
              help="With --estimate: price the batch as one created with this schedule (docs/scheduling.md).")
@config_option
def validate(input_path: Path, endpoint: str | None, estimate: bool, as_json: bool, schedule: str | None,
             config: Path | None) -> None:
    """Check a batch file offline; print every problem with its line number.

    Needs no API key: models whose key is not in the environment are still known by name.
    """
    from freight.cli import local_run
    from freight.cli.preview import endpoint_refusal
    from freight.runtime import build_catalog

    if as_json and not estimate:
        raise click.UsageError("--json needs --estimate (it prints the estimate as one JSON object)")
    if schedule is not None and not estimate:
        raise click.UsageError("--schedule needs --estimate (it prices the batch as one with that schedule)")
    settings = _settings(config, None)
    try:  # (what creating the batch with that schedule would answer)
        check_schedule(schedule, settings.engine.scheduling.calendar.off_peak)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--schedule") from None
    catalog = build_catalog(settings, offline=True)
    try:
        endpoint = endpoint or local_run.infer_endpoint(input_path)
    except FreightError:
        endpoint = "/v1/chat/completions"
    limits = settings.input_limits
    validator = BatchInputValidator(endpoint=endpoint, model_check=catalog.check, limits=limits)
    refused = endpoint_refusal(input_path, endpoint, limits.max_line_bytes)
    if refused is not None:  # the batch is refused before its lines are read
        validator.refuse(refused)
    else:
        with open(input_path, "rb") as fh:
            for raw in iter_lines(fh, limits.max_line_bytes):
                validator.feed(raw)
    problems = validator.finish()
    for p in problems:
        click.echo(p.describe(input_path))
    if validator.problem_count > len(problems):
        click.echo(f"... and {validator.problem_count - len(problems)} more problems")
    if problems:
        click.echo(f"{validator.problem_count} problem(s); {validator.request_count} valid request(s).", err=True)
        sys.exit(1)
    if estimate:
        from freight.cli.estimate import estimate_file, show_estimate

        found = estimate_file(settings, input_path, endpoint, validator.model, schedule=schedule)
        if as_json:
            click.echo(jsonx.dumps(found).decode())
            return
        click.echo(f"ok: {validator.request_count} requests for {validator.model} on {endpoint}")
        show_estimate(found)
        return
    click.echo(f"ok: {validator.request_count} requests for {validator.model} on {endpoint}")


@cli.command(name="preview")
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "n", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many lines to run.")
@click.option("--pick", "how", type=click.Choice(["first", "random"]), default="first", show_default=True)
@click.option("--seed", type=int, default=None, help="With --pick random: the same lines every time.")
@click.option("--endpoint", default=None, help="The batch endpoint (default: the url of the input's lines).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the lines and the extrapolation.")
@config_option
def preview_command(input_path: Path, n: int, how: str, seed: int | None, endpoint: str | None, as_json: bool,
                    config: Path | None) -> None:
    """Run N lines of a batch file now, on the configured models, before running all of it (docs/cli.md)."""
    from freight.cli import local_run
    from freight.cli.preview import preview, preview_settings
    from freight.runtime import build_catalog

    settings = _settings(config, None)
    endpoint = endpoint or local_run.infer_endpoint(input_path)
    preview(settings, build_catalog(preview_settings(settings, n)), input_path, endpoint, n, how, seed, as_json)


@cli.command()
@data_dir_option
@database_url_option
@config_option
def migrate(data_dir: Path | None, database_url: str | None, config: Path | None) -> None:
    """Create or upgrade freight's database schema (numbered migrations; safe to run again)."""
    from freight.store import migrate_store

    settings = _settings(config, data_dir, database_url=database_url)
    where, applied, version = migrate_store(settings.database_url, settings.data_dir)
    if applied:
        console.print(f"{where}: applied migration(s) {', '.join(map(str, applied))}; schema version {version}")
    else:
        console.print(f"{where}: up to date (schema version {version})")


for command in client_commands:
    cli.add_command(command)
cli.add_command(keys)
cli.add_command(config_command)
cli.add_command(results)


def main() -> None:
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FreightError as exc:
        if verbose:
            console.print_exception()
        console.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)  # (one line: greppable)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # the CLI's last-resort handler: a message, the traceback only with -v
        if verbose:
            console.print_exception()
        console.print(f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)
