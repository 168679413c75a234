"""Lines of the output and error files (wire/batch_output.py): ASCII only, whatever the strings hold (users
split them with str.splitlines), one line each, the stored body spliced in unparsed when it is ASCII."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from freight.domain.requests import Result
from freight.wire.batch_output import result_line

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
BODY = st.one_of(st.none(), st.dictionaries(TEXT, st.one_of(TEXT, st.integers(), st.booleans()), max_size=3).map(
    lambda d: json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()))
ANSWER = st.builds(Result, status_code=st.sampled_from([200, 400, 500]), body=BODY,
                   request_id=st.one_of(st.none(), TEXT))
NO_ANSWER = st.builds(Result.never_ran, TEXT, TEXT)


@given(TEXT, TEXT, st.one_of(ANSWER, NO_ANSWER))
def test_a_line_is_one_ascii_line_that_reads_back_as_written(line_id: str, custom_id: str, result: Result) -> None:
    line = result_line(line_id, custom_id, result)
    assert line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = json.loads(line)
    assert (parsed["id"], parsed["custom_id"]) == (line_id, custom_id)
    if result.status_code is not None:
        assert parsed["response"]["body"] == (json.loads(result.body) if result.body is not None else None)
    else:
        assert parsed["error"] == {"code": result.error_code, "message": result.error_message}


def test_an_ascii_body_is_spliced_in_as_it_is() -> None:
    body = b'{"n":1.50,"e":1E5}'  # (parsed and written again, these numbers would change)
    line = result_line("batch_req_1", "c\u00e9", Result(status_code=200, body=body, request_id="req_1"))
    assert body in line and b"c\\u00e9" in line
