"""Lines of the output and error files (shared/reference/batch-apis.md §3.3).

- succeeded: ``{"id","custom_id","response":{"status_code":200,"request_id","body"},"error":null}``
- the endpoint answered with an HTTP error: the same shape, in the error file, ``error: null``;
- no response at all: ``{"id","custom_id","response":null,"error":{"code","message"}}``.

Response bodies are stored as JSON bytes and spliced in without being parsed again.
"""

from __future__ import annotations

from freight.domain.requests import Result
from freight.wire import jsonx


def result_line(request_line_id: str, custom_id: str, result: Result) -> bytes:
    head = b'{"id":' + jsonx.dumps(request_line_id) + b',"custom_id":' + jsonx.dumps(custom_id)
    if result.status_code is not None:
        body = result.body if result.body is not None else b"null"
        if not body.isascii():
            body = jsonx.ascii_escape(body)
        return (
            head
            + b',"response":{"status_code":'
            + str(result.status_code).encode()
            + b',"request_id":'
            + jsonx.dumps(result.request_id)
            + b',"body":'
            + body
            + b'},"error":null}\n'
        )
    error = {"code": result.error_code, "message": result.error_message}
    return head + b',"response":null,"error":' + jsonx.dumps(error) + b"}\n"
