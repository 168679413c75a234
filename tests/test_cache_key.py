"""The result cache's key (RFC 8785 canonical JSON) and its determinism policy (freight/domain/cache_key.py)."""

from __future__ import annotations

import json
import math

import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from freight.domain.cache_key import (
    IRRELEVANT_FIELDS,
    _general,
    _plain,
    cache_key,
    cacheable,
    canonical,
    canonical_bytes,
    number,
)

_text = st.text(st.characters(blacklist_categories=("Cs",)))  # RFC 8785 refuses lone surrogates
_floats = st.floats(allow_nan=False, allow_infinity=False)
_ints = st.integers(min_value=-(2 ** 53) + 1, max_value=2 ** 53 - 1)
_json = st.recursive(
    st.none() | st.booleans() | _ints | _floats | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_canonical_matches_an_independent_rfc8785_implementation(value: object) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


# What a request body mostly is: no floats, ASCII member names; any text, lone surrogates included.
_any_text = st.text(st.characters())
_ascii = st.text(st.characters(max_codepoint=127))
_plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 53), max_value=2 ** 53) | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ascii, inner, max_size=4),
    max_leaves=20,
)


def _spec_string(s: str) -> str:
    """JSON.stringify's escapes, a character at a time (the reference for the fast writer)."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(short.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " else ch) for ch in s) + '"'


@given(_plain_json)
def test_the_fast_writer_gives_the_same_bytes_as_the_spec_literal_one(value: object) -> None:
    assert _plain(value)
    assert canonical(value) == _general(value)


@given(_plain_json)
def test_the_fast_writer_matches_rfc8785_where_it_accepts_the_text(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return  # a lone surrogate: RFC 8785 refuses it (we hash it as its code unit; see the next test)
    assert canonical_bytes(value) == expected


@given(_any_text)
def test_strings_are_escaped_as_json_stringify_does(s: str) -> None:
    assert canonical(s) == _general(s) == _spec_string(s)
    assert canonical({"k": [s]}) == '{"k":[' + _spec_string(s) + "]}"


def test_what_the_fast_writer_leaves_to_the_spec_literal_one() -> None:
    for value in (1.5, 0.0, 2 ** 53 + 1, {"\ufb01": 1}, (1, 2), {"a": [1e21]}, {1: 2}):
        assert not _plain(value)
    assert canonical({"t": 0.0, "n": 2 ** 60, "\U0001f600": 1, "\ufb01": [1.0, True]}) == (
        '{"n":1152921504606847000,"t":0,"\U0001f600":1,"\ufb01":[1,true]}')
    assert canonical([True, False, None, -0]) == "[true,false,null,0]"


@given(_json)
def test_canonical_is_valid_json_of_the_same_value(value: object) -> None:
    back = json.loads(canonical(value))
    assert canonical(back) == canonical(value)


@given(st.dictionaries(_text, _ints, max_size=6), st.randoms())
def test_key_order_does_not_change_the_key(body: dict[str, int], rnd: object) -> None:
    items = list(body.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert cache_key("/v1/embeddings", body, "m") == cache_key("/v1/embeddings", dict(items), "m")


@given(_floats)
def test_numbers_as_ecmascript_writes_them(x: float) -> None:
    text = number(x)
    assert float(text) == x or (x == 0 and text == "0")
    assert text == rfc8785.dumps(x).decode()


def test_number_forms() -> None:
    assert [number(v) for v in (0.0, -0.0, 1.0, 100, 1e21, 1e20, 1e-6, 1e-7, 0.1, -1.5e-7, 123.456, 2 ** 60)] == [
        "0", "0", "1", "100", "1e+21", "100000000000000000000", "0.000001", "1e-7", "0.1", "-1.5e-7", "123.456",
        "1152921504606847000"]  # as a double, as ECMAScript reads it
    assert number(1) == number(1.0)  # 1 and 1.0 are one JSON number
    assert not math.isnan(float(number(5e-324)))


def test_unicode_names_sort_by_utf16_code_units() -> None:
    # U+1F600 is D83D DE00 in UTF-16: before U+FB01 there, after it by code point.
    assert canonical({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'
    assert canonical("\u0007\n\u2028é") == '"\\u0007\\n\u2028é"'


def test_fields_that_cannot_change_the_answer_are_not_in_the_key() -> None:
    base = {"model": "m", "input": "hi"}
    for name in IRRELEVANT_FIELDS:
        assert cache_key("/v1/embeddings", {**base, name: "x"}, "m") == cache_key("/v1/embeddings", base, "m")
    assert cache_key("/v1/embeddings", {**base, "input": "ho"}, "m") != cache_key("/v1/embeddings", base, "m")
    assert cache_key("/v1/embeddings", base, "m@a") != cache_key("/v1/embeddings", base, "m@b")
    assert cache_key("/v1/embeddings", base, "m") != cache_key("/v1/completions", base, "m")


@given(st.floats(min_value=0.01, max_value=2), st.integers(min_value=1, max_value=8))
def test_sampled_requests_without_seed_are_never_cached(temperature: float, n: int) -> None:
    for endpoint in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"):
        assert not cacheable(endpoint, {"model": "m", "temperature": temperature, "n": n})
        assert cacheable(endpoint, {"model": "m", "temperature": temperature, "n": n, "seed": 7})
        assert cacheable(endpoint, {"model": "m", "temperature": 0, "n": n})


def test_policy_defaults() -> None:
    assert cacheable("/v1/embeddings", {"model": "m", "input": "x"})
    assert not cacheable("/v1/chat/completions", {"model": "m"})  # temperature defaults to 1 upstream
    assert not cacheable("/v1/chat/completions", {"model": "m", "seed": True, "temperature": 1})
    assert cacheable("/v1/chat/completions", {"model": "m", "temperature": 0.0})
