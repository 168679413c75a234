"""``freight results BATCH_ID [--join DATA] [--format jsonl|csv|parquet] [-o FILE]``.

One row per finished request in input order (freight/wire/results_table.py). ``--join`` adds the
columns of a data file (JSONL, CSV or Parquet, by extension) whose ``custom_id`` column (``--on``)
matches the request's; a data column named like a result column gets the suffix ``_data``.

A mistake is reported before the server is asked anything and before anything is written: an extension
of -o or --join that is not .jsonl, .csv or .parquet, or a -o extension that --format contradicts (usage
errors, exit 2); a data file that cannot be read, with its line (or Parquet row), that has no --on column,
or a row without an id or with one seen before (exit 1). A join that matches no request is warned about.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from freight.cli.client import ApiError, key_option, url_option
from freight.domain.errors import InvalidInput

#: The formats of --join files and of -o, by extension.
FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SUPPORTED = ", ".join(FORMATS)


def data_format(path: Path) -> str:
    """The format of a --join file, from its extension (a usage error for another one)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        ext = repr(path.suffix) if path.suffix else "(it has none)"
        raise click.BadParameter(f"{path}: cannot tell its format from its extension {ext}; use one of {SUPPORTED}",
                                 param_hint="'--join'")
    return fmt


def output_format(fmt: str | None, output: Path | None) -> str:
    """The format to write: --format, else -o's extension, else jsonl (a usage error for an unknown extension)."""
    ext = output.suffix.lower() if output is not None else ""
    by_ext = FORMATS.get(ext)
    if ext and by_ext is None and fmt is None:
        raise click.BadParameter(f"{output}: cannot tell the format from its extension {ext!r}; use one of "
                                 f"{SUPPORTED} (or --format jsonl|csv|parquet)", param_hint="'-o'")
    if fmt is not None and by_ext is not None and by_ext != fmt:
        raise click.UsageError(f"--format {fmt} does not match the extension of -o {output} ({by_ext})")
    fmt = fmt or by_ext or "jsonl"
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet needs -o FILE")
        _pyarrow()
    return fmt


def _pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InvalidInput("Parquet needs pyarrow: pip install 'freight[data]'") from None


Rows = list[tuple[str, dict[str, Any]]]  # (where in the file: "line N" / "row N", the row)


def _read_jsonl(path: Path) -> tuple[Rows, list[str]]:
    rows: Rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{path} line {n}: not UTF-8 text") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path} line {n}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InvalidInput(f"{path} line {n}: not a JSON object (a JSONL data file has one object a line)")
            rows.append((f"line {n}", row))
    return rows, list(dict.fromkeys(k for _, r in rows for k in r))


def _read_csv(path: Path) -> tuple[Rows, list[str]]:
    rows: Rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        try:
            columns = list(reader.fieldnames or [])
            for row in reader:
                if None in row:  # (DictReader's key for the fields past the header's)
                    raise InvalidInput(f"{path} line {reader.line_num}: more fields than the header's {len(columns)}")
                rows.append((f"line {reader.line_num}", row))
        except UnicodeDecodeError:
            raise InvalidInput(f"{path} line {reader.line_num + 1}: not UTF-8 text") from None
        except csv.Error as exc:
            raise InvalidInput(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows, columns


def _read_parquet(path: Path) -> tuple[Rows, list[str]]:
    _pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path} as Parquet: {exc}") from None
    return [(f"row {n}", row) for n, row in enumerate(table.to_pylist(), 1)], list(table.column_names)


def read_table(path: Path, on: str) -> dict[str, dict[str, Any]]:
    """A --join file's rows by their ``on`` column (as text). Every row needs one, and a different one."""
    try:
        rows, columns = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[data_format(path)](path)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if on not in columns:
        have = ", ".join(map(repr, columns)) if columns else "none (the file is empty)"
        raise InvalidInput(f"{path} has no column {on!r} (--on: the column matched to the requests' custom_id); "
                           f"its columns: {have}")
    by_id: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for where, row in rows:
        value = row.get(on)
        if value is None or value == "":
            raise InvalidInput(f"{path} {where}: no {on!r} (--on): every row needs one to match a request")
        key = str(value)
        if key in seen:
            raise InvalidInput(f"{path} {where}: {on} {key!r} again (first on {seen[key]}): which row to join?")
        seen[key] = where
        by_id[key] = row
    return by_id


def join(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], on: str) -> tuple[list[dict[str, Any]], int]:
    """The rows with their data columns; and how many rows found theirs."""
    out, matched = [], 0
    for row in rows:
        extra = by_id.get(str(row["custom_id"]))
        merged = dict(row)
        if extra is not None:
            matched += 1
            for key, value in extra.items():
                if key == on and on == "custom_id":
                    continue
                merged[f"{key}_data" if key in row else key] = value
        out.append(merged)
    return out, matched


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value, default=str)


def write(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    try:
        if fmt == "parquet":
            _write_parquet(rows, columns, out)
            return
        buf = io.StringIO()
        if fmt == "csv":
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(r.get(k)) for k in columns})
        else:
            for r in rows:
                buf.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        if out is None:
            sys.stdout.write(buf.getvalue())
        else:
            out.write_text(buf.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {out or 'stdout'}: {exc.strerror or exc}") from None


def _write_parquet(rows: list[dict[str, Any]], columns: list[str], out: Path | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert out is not None
    try:
        table = pa.Table.from_pylist([{k: _cell(r.get(k)) if k == "answer" else r.get(k) for k in columns}
                                      for r in rows])
    except pa.ArrowException as exc:  # (a --join column whose values are of different types)
        raise InvalidInput(f"cannot write the rows as Parquet: {exc}; try -o FILE.jsonl or FILE.csv") from None
    pq.write_table(table, out)


@click.command()
@click.argument("batch_id")
@click.option("--join", "join_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"A data file ({SUPPORTED}) whose rows match the requests by custom_id.")
@click.option("--on", default="custom_id", show_default=True, help="The --join file's column of custom ids.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help=f"Default: from -o's extension ({SUPPORTED}), else jsonl.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (default: stdout; parquet needs a file).")
@url_option
@key_option
def results(batch_id: str, join_path: Path | None, on: str, fmt: str | None, output: Path | None,
            url: str | None, api_key: str | None) -> None:
    """One row per request (custom_id, status, answer, tokens, cost, error), in input order."""
    fmt = output_format(fmt, output)
    # The data file is read first: a mistake in it is reported before anything is fetched or written.
    by_id = read_table(join_path, on) if join_path is not None else None
    import httpx

    from freight.client import Client, FreightError  # (here: its HTTP client is not needed by other commands)

    try:
        with Client(url, api_key) as client:
            rows = client.results(batch_id)
    except FreightError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the server: {exc}") from None
    if by_id is not None:
        rows, matched = join(rows, by_id, on)
        if rows and not matched:
            click.echo(f"warning: no row of {join_path} matched a request (by its {on!r} column): "
                       "no data column was added", err=True)
    write(rows, fmt, output)
    if output is not None:
        click.echo(f"{len(rows)} rows -> {output}", err=True)
