"""Logging for every ``freight`` command: one handler on stderr, in text or JSON.

- ``text`` (the default): ``2026-01-01 12:00:00,000 INFO freight.engine: message key=value …``,
  the fields given with ``extra=`` appended unless the message already says them;
- ``json`` (``--log-format json`` or ``FREIGHT_LOG_FORMAT=json``): one JSON object per line with
  ``ts``, ``level``, ``logger``, ``message``, every ``extra=`` field, and ``exc_info`` for a
  traceback, for log shippers.

Loggers: ``freight.access`` (one line per HTTP request, api/access_log.py), ``freight.engine``
(one line per batch transition, repeated failures summarised), ``freight.api`` (request-level
failures at debug, unhandled errors), ``freight.files``, ``freight.lanes``. uvicorn's own access log
stays off (the access log above has the project and the request id); its error log passes through.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


#: Fields the text format leaves to JSON: the message says them already, in its own words.
_TEXT_HIDDEN = frozenset({"event", "duration_ms"})
#: Fields no format shows (uvicorn's message with terminal colours).
_DROPPED = frozenset({"color_message"})


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items()
            if k not in _STANDARD and k not in _DROPPED and not k.startswith("_")}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, _plain(value))
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        message = record.getMessage()
        more = [f"{k}={v}" for k, v in extra_fields(record).items()
                if k not in _TEXT_HIDDEN and v is not None and str(v) not in message]
        return line + (" " + " ".join(more) if more else "")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``setup_logging`` installs (and replaces when it is called again)."""


def resolve_format(value: str | None) -> str:
    fmt = (value or os.environ.get("FREIGHT_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (FREIGHT_LOG_FORMAT): use one of {', '.join(FORMATS)}")
    return fmt


def setup_logging(level: str | int, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Send every log line of this process to ``stream`` (stderr) at ``level``, in ``fmt``."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):  # set up before (the group's options, then serve's)
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn's loggers: errors go through the handler above; its access log is ours (api/access_log.py).
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Libraries that log every HTTP call they make at info would drown the access log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # The multipart parser warns about a client's broken body: a request-level failure, so debug only
    # (the 400 has its access line, and its reason at debug).
    logging.getLogger("python_multipart").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.ERROR)
