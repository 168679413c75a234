"""A secret removed from a JSON body before it is stored or answered, whatever the body's encoding.

The body is decoded, every string (and object key) redacted, and serialized again when anything
changed (or when it spans several lines); then the final bytes are scrubbed once more, for forms the
decoder does not undo (a key inside a string that is itself JSON, percent-encoded, in a body that is
not JSON at all).
"""

from __future__ import annotations

from typing import Any

from freight.domain.secrets import Secret
from freight.wire import jsonx

#: What ``redact_body`` returns as the value of a body that is not JSON.
NOT_JSON: Any = object()


def redact_body(secret: Secret, raw: bytes) -> tuple[bytes, Any]:
    """(one line of bytes safe to store, the parsed and redacted value or ``NOT_JSON``)."""
    try:
        data = jsonx.loads(raw) if raw.strip() else NOT_JSON
    except jsonx.JSONDecodeError:
        data = NOT_JSON
    if data is NOT_JSON:
        return secret.scrub_bytes(raw), NOT_JSON
    data, changed = secret.redact(data)
    body = jsonx.dumps(data) if changed or b"\n" in raw or b"\r" in raw else raw
    return secret.scrub_bytes(body), data
