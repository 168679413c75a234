"""The JSONL reader and the batch input validator: property tests and every error code."""

from __future__ import annotations

import io
import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from freight.wire.batch_input import BatchInputValidator, InputLimits, RawLine, iter_lines


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, to cut lines at every position."""

    def __init__(self, data: bytes, step: int):
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk = self.data[self.pos : self.pos + self.step]
        self.pos += len(chunk)
        return chunk


line_text = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@given(st.lists(line_text, max_size=20), st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.booleans(),
       st.integers(min_value=1, max_value=7))
def test_iter_lines_returns_every_line_with_its_number(lines: list[bytes], ending: bytes, bom: bool,
                                                        trailing: bool, step: int) -> None:
    assume(not (lines and lines[0].startswith(b"\xef\xbb\xbf")))  # that one is a BOM, and is skipped
    data = ending.join(lines) + (ending if trailing and lines else b"")
    if bom:
        data = b"\xef\xbb\xbf" + data
    import freight.wire.batch_input as bi

    old = bi.READ_CHUNK
    bi.READ_CHUNK = step
    try:
        got = list(iter_lines(Trickle(data, step), max_line_bytes=1000))  # type: ignore[arg-type]
    finally:
        bi.READ_CHUNK = old
    expected = list(lines)
    if expected and expected[-1] == b"" and not trailing:
        expected = expected[:-1]  # "a\n" + "" is the same file as "a\n"
    assert [r.data for r in got] == expected
    assert [r.line for r in got] == list(range(1, len(expected) + 1))


@given(st.integers(min_value=2, max_value=50), st.integers(min_value=0, max_value=120))
def test_over_long_lines_are_reported_not_held(limit: int, size: int) -> None:
    data = b"a" * size + b"\nok\n"
    got = list(iter_lines(io.BytesIO(data), max_line_bytes=limit))
    assert got[-1] == RawLine(2, b"ok", 2)
    if size > limit:
        assert got[0].data is None and got[0].length == size and got[0].line == 1
    else:
        assert got[0].data == b"a" * size


def line(custom_id: object = "a", url: object = "/v1/embeddings", body: object = None, **extra: object) -> bytes:
    obj: dict[str, object] = {"custom_id": custom_id, "method": "POST", "url": url,
                              "body": body if body is not None else {"model": "m", "input": "x"}}
    obj.update(extra)
    return json.dumps(obj).encode()


def validate(*raw: bytes, limits: InputLimits | None = None) -> BatchInputValidator:
    v = BatchInputValidator("/v1/embeddings", lambda model, ep: None if model == "m" else f"no {model}",
                            limits or InputLimits())
    for raw_line in iter_lines(io.BytesIO(b"\n".join(raw)), 1 << 20):
        v.feed(raw_line)
    v.finish()
    return v


def codes(v: BatchInputValidator) -> list[tuple[int | None, str, str | None]]:
    return [(p.line, p.code, p.param) for p in v.problems]


def test_valid_file_has_no_problems() -> None:
    v = validate(line("a"), b"", line("b"))
    assert v.problems == [] and v.request_count == 2 and v.model == "m"


def test_every_documented_code_with_line_and_param() -> None:
    v = validate(
        b"{not json",
        b"[1, 2]",
        json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {}}).encode(),
        line("b", url="/v1/chat/completions"),
        line("c", body={"model": "m", "input": "x", "stream": True}),
        line("d", body={"input": "x"}),
        line("e", body={"model": "other", "input": "x"}),
        line("f"),
        line("f"),
        line(7),
        line("g", body="text"),
        line("h", body={"model": "m"}),
        b"\xff\xfe not utf-8",
        line("i", method="GET"),
    )
    assert codes(v) == [
        (1, "invalid_json_line", None),
        (2, "invalid_json_line", None),
        (3, "missing_required_parameter", "custom_id"),
        (4, "invalid_url", "url"),
        (5, "streaming_unsupported", "body.stream"),
        (6, "invalid_request", "body.model"),
        (7, "model_not_found", "body.model"),
        (9, "duplicate_custom_id", "custom_id"),
        (10, "invalid_type", "custom_id"),
        (11, "invalid_type", "body"),
        (12, "invalid_request", "body.input"),
        (13, "invalid_json_line", None),
        (14, "invalid_value", "method"),
    ]
    assert "not valid UTF-8" in v.problems[-2].message


def test_a_line_that_is_not_json_says_why_and_where() -> None:
    # (what json.dumps writes for text holding half an emoji: JSON that no UTF-8 string can hold)
    half = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": "m", "input": "half \ud83d"}}).encode()
    column = half.index(b"\\ud83d") + 1
    v = validate(b'{"custom_id": broken}', half)
    assert [p.message for p in v.problems] == [
        "This line is not parseable as valid JSON (unexpected character, expected a JSON value, column 15).",
        "This line is not parseable as valid JSON (no low surrogate in string (a \\ud800-\\udfff escape without its "
        f"pair: half an emoji, which no UTF-8 text can hold), column {column})."]


def test_mismatched_model() -> None:
    v = BatchInputValidator("/v1/embeddings", lambda model, ep: None, InputLimits())
    for n, model in enumerate(["m1", "m1", "m2"], start=1):
        v.feed(RawLine(n, line(str(n), body={"model": model, "input": "x"}), 0))
    assert codes(v) == [(3, "mismatched_model", "body.model")]


def test_empty_file_and_only_blank_lines() -> None:
    assert codes(validate(b"")) == [(None, "empty_file", None)]
    assert codes(validate(b"", b"  ", b"\t")) == [(None, "empty_file", None)]


def test_line_limit_and_error_cap() -> None:
    v = validate(*[line(str(i)) for i in range(5)], limits=InputLimits(max_lines=3))
    assert codes(v) == [(4, "too_many_tasks", None)]
    v = validate(*[b"bad"] * 10, limits=InputLimits(max_reported_errors=4))
    assert len(v.problems) == 4 and v.problem_count == 10


def test_custom_id_length_limit() -> None:
    v = validate(line("x" * 10_000), limits=InputLimits(max_custom_id_chars=64))
    assert codes(v) == [(1, "invalid_value", "custom_id")]


def test_a_custom_id_with_a_nul_is_its_lines_problem() -> None:
    """Found by an audit: valid JSON, so it passed validation; PostgreSQL's text cannot hold U+0000, so storing
    the requests failed ten times and the batch ended failed with internal_error and no line. On both stores
    it is now its line's invalid_value."""
    v = validate(line("ok"), line("a\x00b"), line("fine"))
    assert codes(v) == [(2, "invalid_value", "custom_id")]
    assert "NUL" in v.problems[0].message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=30), json_values.map(lambda v: json.dumps(v).encode()),
                          st.builds(line, st.text(max_size=8))), max_size=8))
def test_validator_never_raises_and_accounts_for_every_line(raw: list[bytes]) -> None:
    cleaned = [r.replace(b"\n", b" ").replace(b"\r", b" ") for r in raw]
    assume(not (cleaned and cleaned[0].startswith(b"\xef\xbb\xbf")))  # a leading BOM is skipped
    v = validate(*cleaned)
    non_blank = sum(1 for r in cleaned if r.strip())
    if non_blank == 0:
        assert codes(v) == [(None, "empty_file", None)]
    else:
        assert v.request_count + v.problem_count == non_blank
        assert all(p.line is not None and 1 <= p.line <= len(cleaned) for p in v.problems)
