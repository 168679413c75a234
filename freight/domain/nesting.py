"""How deep a JSON value sent to freight may nest: one limit for every door.

A request body (real-time or in a batch), a line of a batch input file and a request of a Message
Batch may nest arrays and objects at most ``MAX_JSON_NESTING`` levels deep, counted from the
outermost value (``{"a": [1]}`` is 2 levels). Deeper values are refused as the client's mistake,
with a clear error, at every entry point (docs/input-format.md): at upload, at batch validation,
at ``POST /v1/messages/batches`` and on the real-time endpoints. Without one limit, a value that
one step accepts (orjson reads 1,024 levels) could be one a later step cannot write (orjson
writes 255), and the batch would fail at that step on every try.
"""

from __future__ import annotations

#: The deepest nesting of arrays and objects accepted in one JSON value.
MAX_JSON_NESTING = 128


def too_deep_message(what: str) -> str:
    """``what`` nests too deep: the message every door gives."""
    return (f"{what} nests arrays and objects more than {MAX_JSON_NESTING} levels deep; "
            f"the limit is {MAX_JSON_NESTING} levels.")
