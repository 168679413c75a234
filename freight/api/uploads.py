"""Streaming multipart upload of ``POST /v1/files``: bytes go straight to a blob, never to memory.

The size limit is enforced as the bytes arrive, so an oversized upload is cut off early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from freight.domain.errors import FreightError, InvalidInput, PayloadTooLarge
from freight.domain.files import UPLOAD_PURPOSES
from freight.ports import BlobWriter
from freight.services.files import FileService

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
#: The longest boundary accepted (python-multipart refuses longer ones; RFC 2046 allows 70).
MAX_BOUNDARY_LENGTH = 256


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)


@dataclass
class Upload:
    fields: dict[str, str]
    file_id: str | None
    writer: BlobWriter | None
    filename: str | None


def _content_disposition(value: bytes) -> tuple[str | None, str | None]:
    kind, params = parse_options_header(value)
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None)


async def receive_upload(request: Request, files: FileService) -> Upload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise InvalidInput("Expected a multipart/form-data body with a 'file' part and a 'purpose' field.",
                           param="file", code="invalid_content_type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("The multipart body has no boundary.", param="file", code="invalid_content_type")

    fields: dict[str, str] = {}
    part = _Part()
    state: dict[str, Any] = {"file_id": None, "writer": None, "filename": None, "in_file": False, "ended": False}

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        if bytes(part.header_field).lower() == b"content-disposition":
            part.name, part.filename = _content_disposition(bytes(part.header_value))
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        if part.name == "file":
            if state["writer"] is not None:
                raise InvalidInput("Only one 'file' part is allowed.", param="file", code="invalid_value")
            file_id, writer = files.new_upload()
            purpose = fields.get("purpose")
            # The SDKs send the form fields before the file: with the purpose known, the tighter
            # limit of that purpose (200 MB for batch input) cuts an oversized upload off early.
            limit = files.max_bytes_for(purpose) if purpose in UPLOAD_PURPOSES else files.limits.max_upload_bytes
            state.update(file_id=file_id, writer=writer, filename=part.filename, in_file=True, limit=limit)
        else:
            state["in_file"] = False
            if len(fields) >= MAX_FIELDS:
                raise InvalidInput("Too many form fields.", code="invalid_value")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            writer: BlobWriter = state["writer"]
            writer.write(data[start:end])
            limit = state["limit"]
            if writer.size > limit:
                raise PayloadTooLarge(f"The file is larger than the {limit} byte limit for this upload.",
                                      param="file", code="file_too_large")
        else:
            part.data += data[start:end]
            if len(part.data) > MAX_FIELD_BYTES:
                raise InvalidInput(f"The form field {part.name!r} is too large.", param=part.name,
                                   code="invalid_value")

    def on_part_end() -> None:
        if not state["in_file"] and part.name is not None:
            fields[part.name] = part.data.decode("utf-8", "replace")
        state["in_file"] = False

    def on_end() -> None:
        state["ended"] = True

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_end": on_end,
    }
    try:
        if len(boundary) > MAX_BOUNDARY_LENGTH:
            raise InvalidInput(f"The multipart boundary is {len(boundary)} characters long; at most "
                               f"{MAX_BOUNDARY_LENGTH} are allowed (RFC 2046 recommends 70).", param="file",
                               code="invalid_content_type")
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if not state["ended"]:
            # The body ended before the closing boundary (a client or proxy cut it short): what
            # arrived may be any prefix of the file, so none of it is kept.
            raise InvalidInput("The multipart body ended before its closing boundary: the upload was cut "
                               "short, and nothing was stored.", param="file", code="invalid_multipart")
    except BaseException as exc:
        if state["writer"] is not None:
            state["writer"].abort()
        if isinstance(exc, FreightError):
            raise
        if isinstance(exc, Exception):
            raise InvalidInput(f"The multipart body could not be parsed: {exc}", param="file",
                               code="invalid_multipart") from None
        raise
    return Upload(fields=fields, file_id=state["file_id"], writer=state["writer"], filename=state["filename"])


async def drain(request: Request, max_bytes: int) -> None:
    """Read and drop a request body (a replayed upload), still bounded by the upload limit."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The request body is larger than the {max_bytes} byte upload limit.",
                                  param="file", code="file_too_large")
