"""``freight results BATCH_ID [--join DATA] [--format jsonl|csv|parquet] [-o FILE]``.

One row per finished request in input order (freight/wire/results_table.py). ``--join`` adds the
columns of a data file (JSONL, CSV or Parquet, by extension) whose ``custom_id`` column (``--on``)
matches the request's; a data column named like a result column gets the suffix ``_data``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from freight.cli.client import key_option, url_option


def read_table(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def join(rows: list[dict[str, Any]], data: list[dict[str, Any]], on: str) -> list[dict[str, Any]]:
    by_id = {str(r.get(on)): r for r in data}
    out = []
    for row in rows:
        extra = by_id.get(str(row["custom_id"]), {})
        merged = dict(row)
        for key, value in extra.items():
            if key == on and on == "custom_id":
                continue
            merged[f"{key}_data" if key in row else key] = value
        out.append(merged)
    return out


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)


def write(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert out is not None
        table = pa.Table.from_pylist([{k: _cell(r.get(k)) if k == "answer" else r.get(k) for k in columns}
                                      for r in rows])
        pq.write_table(table, out)
        return
    buf = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k)) for k in columns})
    else:
        for r in rows:
            buf.write(json.dumps(r, ensure_ascii=False) + "\n")
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        out.write_text(buf.getvalue(), encoding="utf-8")


@click.command()
@click.argument("batch_id")
@click.option("--join", "join_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A data file (JSONL, CSV or Parquet) whose rows match the requests by custom_id.")
@click.option("--on", default="custom_id", show_default=True, help="The --join file's column of custom ids.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help="Default: from -o's extension, else jsonl.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (default: stdout; parquet needs a file).")
@url_option
@key_option
def results(batch_id: str, join_path: Path | None, on: str, fmt: str | None, output: Path | None,
            url: str | None, api_key: str | None) -> None:
    """One row per request (custom_id, status, answer, tokens, cost, error), in input order."""
    if fmt is None:
        fmt = output.suffix.lstrip(".").lower() if output is not None and output.suffix else "jsonl"
        fmt = fmt if fmt in ("jsonl", "csv", "parquet") else "jsonl"
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs -o FILE")
    from freight.client import Client, FreightError  # (here: its HTTP client is not needed by other commands)

    try:
        with Client(url, api_key) as client:
            rows = client.results(batch_id)
    except FreightError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if join_path is not None:
        rows = join(rows, read_table(join_path), on)
    write(rows, fmt, output)
    if output is not None:
        click.echo(f"{len(rows)} rows -> {output}", err=True)
