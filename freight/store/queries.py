"""Named SQL, one set per dialect: freight/store/sql/<dialect>/*.sql, loaded once.

Each file holds queries under ``-- name: <query>`` lines (other ``--`` lines are comments).
Parameters are ``:name`` in both dialects (turned into psycopg's ``%(name)s`` for PostgreSQL).
Values the domain defines are written as macros and filled in at load, so that each is written once:

- ``{batch.<status>}``, ``{sub.<state>}``: a quoted ``BatchStatus`` / ``SubState`` value;
- ``{request.<state>}``, ``{file.<state>}``: a ``RequestState`` / ``FileRowState`` number;
- ``{batch.terminal}``: the parenthesised list of terminal statuses;
- ``{cols.batch}`` (``{cols.b_batch}``: of ``batches b``), ``{cols.file}``, ``{cols.lane_sub}``: the
  columns the row readers expect.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from importlib import resources

from freight.domain.batches import TERMINAL, BatchStatus
from freight.domain.files import FileRowState
from freight.domain.lanes import SubState
from freight.domain.requests import RequestState

BATCH_COLUMNS = (
    "id, project, endpoint, input_file_id, completion_window, status, created_at, expires_at, in_progress_at, "
    "finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, output_file_id, "
    "error_file_id, errors, metadata, model, total, completed, failed, input_tokens, output_tokens, "
    "output_expires_after_s, max_cost_usd, output_schema, invalid_outputs, priority, paused_at, use_cache, cached, "
    "saved_input_tokens, saved_output_tokens, schedule, not_before"
)
FILE_COLUMNS = "id, project, filename, purpose, bytes, created_at, expires_at, status, status_details, lines"
LANE_SUB_COLUMNS = (
    "id, batch_id, round, state, requests, bytes, created_at, upload_id, upstream_id, create_sent_at, "
    "upstream_status, completed, failed, cancel_sent"
)

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MACRO = re.compile(r"\{(\w+)\.(\w+)\}")
_PARAM_OR_LITERAL = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):([a-z_][a-z0-9_]*)")


def _quoted(e: enum.Enum) -> str:
    return f"'{e.value}'"


def _macros() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for s in BatchStatus:
        out["batch", s.value] = _quoted(s)
    out["batch", "terminal"] = "(" + ", ".join(_quoted(s) for s in BatchStatus if s in TERMINAL) + ")"
    for sub in SubState:
        out["sub", sub.value] = _quoted(sub)
    for r in RequestState:
        out["request", r.name.lower()] = str(int(r))
    for f in FileRowState:
        out["file", f.name.lower()] = str(int(f))
    out["cols", "batch"] = BATCH_COLUMNS
    out["cols", "b_batch"] = ", ".join("b." + c.strip() for c in BATCH_COLUMNS.split(","))
    out["cols", "file"] = FILE_COLUMNS
    out["cols", "lane_sub"] = LANE_SUB_COLUMNS
    return out


def expand(sql: str) -> str:
    """Fill in the macros of a piece of SQL (an unknown one is an error, not left in)."""
    macros = _macros()

    def sub(m: re.Match[str]) -> str:
        try:
            return macros[m.group(1), m.group(2)]
        except KeyError:
            raise KeyError(f"unknown SQL macro {m.group(0)}") from None

    return _MACRO.sub(sub, sql)


def parse(text: str) -> dict[str, str]:
    """The named queries of one file."""
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name} is defined twice")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]  # comments: for readers
        out[name] = expand("\n".join(lines).strip().rstrip(";"))
    return out


def _rename_params(sql: str, rename: Callable[[str], str]) -> str:
    """``sql`` with each named parameter (``:name``) replaced by ``rename(name)``; string literals as they are."""
    return _PARAM_OR_LITERAL.sub(lambda m: m.group(0) if m.group(1) is None else rename(m.group(1)), sql)


@functools.cache
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """A query with named parameters (``:name``) as one with numbered ones (``?1``, a name used twice
    keeps its number), and the names in number order: for rows passed as tuples, which SQLite binds
    without looking each name up in a dict per row."""
    order: dict[str, int] = {}
    numbered = _rename_params(sql, lambda name: f"?{order.setdefault(name, len(order) + 1)}")
    return numbered, tuple(order)


@functools.cache
def queries(dialect: str) -> dict[str, str]:
    """Every named query of a dialect ("sqlite" or "postgres"), in the driver's parameter style."""
    out: dict[str, str] = {}
    folder = resources.files("freight.store").joinpath("sql", dialect)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or entry.name == "schema.sql":
            continue
        for name, sql in parse(entry.read_text()).items():
            if name in out:
                raise ValueError(f"query {name} is defined twice ({entry.name})")
            out[name] = _rename_params(sql.replace("%", "%%"), "%({})s".format) if dialect == "postgres" else sql
    return out
