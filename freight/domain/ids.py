"""Prefixed random ids ("file-…", "batch_…") and the patterns that recognise them.

Ids are generated here and only here; an id that comes from a client is checked against its
pattern before it reaches a store, so no user-supplied string ever names a path.
"""

from __future__ import annotations

import hashlib
import re
import secrets

FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"
BATCH_REQUEST_PREFIX = "batch_req_"
REQUEST_PREFIX = "req_"

_ID_BODY = r"[a-f0-9]{24}"
FILE_ID_RE = re.compile(rf"^file-{_ID_BODY}$")
BATCH_ID_RE = re.compile(rf"^batch_{_ID_BODY}$")


def _random() -> str:
    return secrets.token_hex(12)


def new_file_id() -> str:
    return FILE_PREFIX + _random()


def new_batch_id() -> str:
    return BATCH_PREFIX + _random()


def new_request_id() -> str:
    return REQUEST_PREFIX + _random()


def upstream_request_id(value: object) -> str:
    """An upstream's request id where it is a plain short token (ASCII, printable, at most 200 characters),
    else a new one: every answer carries one."""
    if isinstance(value, str) and value and len(value) <= 200 and value.isascii() and value.isprintable():
        return value
    return new_request_id()


def new_request_ids(n: int) -> list[str]:
    """``n`` request ids (as ``new_request_id``), from one read of the system's random source."""
    text = secrets.token_hex(12 * n)
    return [REQUEST_PREFIX + text[i:i + 24] for i in range(0, 24 * n, 24)]


def new_attempt_id() -> str:
    return secrets.token_hex(8)


def batch_request_id(batch_id: str, idx: int) -> str:
    """The output line's "id": stable for a request across retries and restarts."""
    digest = hashlib.blake2b(f"{batch_id}/{idx}".encode(), digest_size=12).hexdigest()
    return BATCH_REQUEST_PREFIX + digest


def is_file_id(value: str) -> bool:
    return bool(FILE_ID_RE.match(value))


def is_batch_id(value: str) -> bool:
    return bool(BATCH_ID_RE.match(value))


EVENT_PREFIX = "evt_"
WEBHOOK_ENDPOINT_PREFIX = "we_"
WEBHOOK_ENDPOINT_ID_RE = re.compile(rf"^we_{_ID_BODY}$")


def new_event_id() -> str:
    """A batch event's id: the ``webhook-id`` of every delivery of it (stable across retries)."""
    return EVENT_PREFIX + _random()


def new_webhook_endpoint_id() -> str:
    return WEBHOOK_ENDPOINT_PREFIX + _random()


def is_webhook_endpoint_id(value: str) -> bool:
    return bool(WEBHOOK_ENDPOINT_ID_RE.match(value))
