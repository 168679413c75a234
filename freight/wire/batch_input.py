"""Reading and validating OpenAI batch input files (JSONL), streaming, line by line.

Every problem is reported with its 1-based physical line number and a dotted ``param``, using
OpenAI's codes (shared/reference/batch-apis.md §3.2). Decisions where OpenAI is silent, documented
in docs/input-format.md:

- a UTF-8 byte-order mark at the start of the file is skipped;
- ``\\r\\n`` line endings are accepted;
- blank (whitespace-only) lines are skipped but still counted for line numbers;
- a line longer than ``max_line_bytes`` is ``line_too_large`` and is never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from freight.domain.batches import describe_problem
from freight.domain.nesting import MAX_JSON_NESTING, too_deep_message
from freight.domain.records import quick_init
from freight.domain.text import storable
from freight.wire import jsonx
from freight.wire.json_stream import nests_deeper_than

BOM = b"\xef\xbb\xbf"
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputLimits:
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    max_line_bytes: int = 16 * 1024 * 1024
    max_custom_id_chars: int = 512
    max_reported_errors: int = 1000


@dataclass(frozen=True)
class LineProblem:
    line: int | None
    code: str
    message: str
    param: str | None = None

    def describe(self, source: object = None) -> str:
        """``SOURCE:line N: code (param): message`` (docs/cli.md; ``file`` for a problem of the whole file)."""
        text = describe_problem(self.line, self.code, self.param, self.message)
        return text if source is None else f"{source}:{text}"


@quick_init
@dataclass(frozen=True)
class ValidRequest:
    line: int
    custom_id: str
    body: bytes
    model: str | None


@quick_init
@dataclass(frozen=True)
class RawLine:
    line: int
    data: bytes | None  # None when the line was too long to read
    length: int


def iter_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[RawLine]:
    """Physical lines of a byte stream without their endings; memory bounded by max_line_bytes."""
    line_no = 0
    buf = b""
    skipping = False  # inside an over-long line: discard until its newline
    skipped_len = 0
    head: bytes | None = b""  # the first bytes, held until we know whether they are a byte-order mark
    while True:
        chunk = stream.read(READ_CHUNK)
        at_eof = not chunk
        if head is not None:
            head += chunk
            if len(head) < len(BOM) and not at_eof:
                continue
            chunk = head[len(BOM) :] if head.startswith(BOM) else head
            head = None
        if at_eof and not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                rest = chunk[start:]
                if skipping:
                    skipped_len += len(rest)
                elif len(buf) + len(rest) > max_line_bytes:
                    skipping = True
                    skipped_len = len(buf) + len(rest)
                    buf = b""
                else:
                    buf += rest
                break
            piece = chunk[start:nl]
            start = nl + 1
            line_no += 1
            if skipping:
                yield RawLine(line_no, None, skipped_len + len(piece))
                skipping = False
                skipped_len = 0
                continue
            data = buf + piece if buf else piece
            buf = b""
            if len(data) > max_line_bytes:
                yield RawLine(line_no, None, len(data))
                continue
            if data.endswith(b"\r"):
                data = data[:-1]
            yield RawLine(line_no, data, len(data))
    if skipping:
        yield RawLine(line_no + 1, None, skipped_len)
    elif buf:
        if buf.endswith(b"\r"):
            buf = buf[:-1]
        yield RawLine(line_no + 1, buf, len(buf))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


#: For each endpoint, the body parameter a request cannot do without.
REQUIRED_BODY_PARAM = {
    "/v1/chat/completions": ("messages", "Messages parameter is required."),
    "/v1/completions": ("prompt", "Prompt parameter is required."),
    "/v1/embeddings": ("input", "Input parameter is required."),
    "/v1/responses": ("input", "Input parameter is required."),
    "/v1/messages": ("messages", "Messages parameter is required."),
}


@dataclass
class BatchInputValidator:
    """Feed it lines; it keeps the valid requests flowing out and the problems in ``problems``.

    ``model_check(model, endpoint)`` returns None when the model is served for the endpoint,
    else the message of a ``model_not_found`` problem.
    """

    endpoint: str
    model_check: Callable[[str, str], str | None]
    limits: InputLimits = field(default_factory=InputLimits)
    problems: list[LineProblem] = field(default_factory=list)
    problem_count: int = 0
    request_count: int = 0
    model: str | None = None
    _seen_ids: set[str] = field(default_factory=set)
    _lines_seen: int = 0
    _too_many: bool = False

    def _problem(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.problem_count += 1
        if len(self.problems) < self.limits.max_reported_errors:
            self.problems.append(LineProblem(line, code, message, param))

    def refuse(self, problem: LineProblem) -> None:
        """A problem of the whole batch found before any line is read (an endpoint freight does not serve)."""
        self._problem(problem.line, problem.code, problem.message, problem.param)

    def feed(self, raw: RawLine) -> ValidRequest | None:
        self._lines_seen = raw.line
        if raw.data is None:
            self._problem(
                raw.line,
                "line_too_large",
                f"This line is {raw.length} bytes long; the limit is {self.limits.max_line_bytes} bytes.",
            )
            return None
        if not raw.data.strip():
            return None
        if self.request_count + self.problem_count >= self.limits.max_lines:
            if not self._too_many:
                self._too_many = True
                self._problem(
                    raw.line,
                    "too_many_tasks",
                    f"The input file has more than {self.limits.max_lines} requests, the limit per batch.",
                )
            return None
        request = self._check(raw.line, raw.data)
        if request is not None:
            self.request_count += 1
        return request

    def _check(self, line: int, data: bytes) -> ValidRequest | None:
        try:
            obj = jsonx.loads(data)
        except jsonx.JSONDecodeError as exc:
            if nests_deeper_than(data, MAX_JSON_NESTING):
                self._problem(line, "nesting_too_deep", too_deep_message("This line"))
                return None
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self._problem(line, "invalid_json_line", "This line is not valid UTF-8.")
                return None
            self._problem(line, "invalid_json_line", f"This line is not parseable as valid JSON ({jsonx.reason(exc)}).")
            return None
        if not isinstance(obj, dict):
            self._problem(line, "invalid_json_line", f"This line is JSON but not an object (got {_type_name(obj)}).")
            return None
        if nests_deeper_than(data, MAX_JSON_NESTING):
            self._problem(line, "nesting_too_deep", too_deep_message("This line"))
            return None
        for key in ("custom_id", "method", "url", "body"):
            if key not in obj:
                self._problem(line, "missing_required_parameter", f"Missing required parameter: '{key}'.", key)
                return None
        custom_id, method, url, body = obj["custom_id"], obj["method"], obj["url"], obj["body"]
        if not isinstance(custom_id, str):
            self._wrong_type(line, "custom_id", "a string", custom_id)
            return None
        if not custom_id:
            self._problem(line, "invalid_value", "custom_id must not be empty.", "custom_id")
            return None
        if not storable(custom_id):
            self._problem(line, "invalid_value", "custom_id must not contain the NUL character (U+0000): "
                          "freight's stores cannot keep it.", "custom_id")
            return None
        if len(custom_id) > self.limits.max_custom_id_chars:
            self._problem(
                line,
                "invalid_value",
                f"custom_id is {len(custom_id)} characters long; the limit is {self.limits.max_custom_id_chars}.",
                "custom_id",
            )
            return None
        if not isinstance(method, str):
            self._wrong_type(line, "method", "a string", method)
            return None
        if method != "POST":
            self._problem(line, "invalid_value", f"Invalid value: {method!r}. Only 'POST' is supported.", "method")
            return None
        if not isinstance(url, str):
            self._wrong_type(line, "url", "a string", url)
            return None
        if url != self.endpoint:
            self._problem(
                line,
                "invalid_url",
                f"The URL provided for this request ({url!r}) does not match the batch endpoint ({self.endpoint!r}).",
                "url",
            )
            return None
        if not isinstance(body, dict):
            self._wrong_type(line, "body", "an object", body)
            return None
        if body.get("stream") is True:
            self._problem(line, "streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream")
            return None
        if "model" not in body or body["model"] is None:
            self._problem(line, "invalid_request", "Model parameter is required.", "body.model")
            return None
        model = body["model"]
        if not isinstance(model, str):
            self._wrong_type(line, "body.model", "a string", model)
            return None
        required = REQUIRED_BODY_PARAM.get(self.endpoint)
        if required is not None and required[0] not in body:
            self._problem(line, "invalid_request", required[1], f"body.{required[0]}")
            return None
        if model == self.model:
            pass  # (checked at its first line: served for this endpoint)
        elif (not_served := self.model_check(model, self.endpoint)) is not None:
            self._problem(line, "model_not_found", not_served, "body.model")
            return None
        elif self.model is None:
            self.model = model
        else:
            self._problem(
                line,
                "mismatched_model",
                f"The model {model!r} for this request does not match the rest of the batch ({self.model!r}). "
                "Each batch must contain requests for a single model.",
                "body.model",
            )
            return None
        if custom_id in self._seen_ids:
            self._problem(
                line,
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} is a duplicate of the custom_id of an earlier request.",
                "custom_id",
            )
            return None
        try:
            encoded = jsonx.dumps(body)
        except (TypeError, ValueError) as exc:  # a value orjson reads but cannot write back
            self._problem(line, "invalid_json_line", f"This line's body cannot be stored: {exc}.", "body")
            return None
        self._seen_ids.add(custom_id)
        return ValidRequest(line=line, custom_id=custom_id, body=encoded, model=model)

    def _wrong_type(self, line: int, param: str, expected: str, value: Any) -> None:
        self._problem(
            line,
            "invalid_type",
            f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
            param,
        )

    def finish(self) -> list[LineProblem]:
        if self.request_count == 0 and self.problem_count == 0:
            self._problem(
                None,
                "empty_file",
                "The input file is empty. Please ensure that the batch contains at least one request.",
            )
        return self.problems


def validate_lines(
    lines: Iterable[RawLine], validator: BatchInputValidator
) -> Iterator[ValidRequest]:
    for raw in lines:
        request = validator.feed(raw)
        if request is not None:
            yield request
