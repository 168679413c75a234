"""Split one array field of a JSON object into its elements' raw bytes, as the bytes arrive.

``POST /v1/messages/batches`` may carry 256 MB: ``{"requests": [{...}, {...}, ...]}``. The
splitter finds where each element of ``requests`` begins and ends without parsing it (orjson parses
each element on its own afterwards), so memory is bounded by the largest element plus one read, and
never holds the whole body.

It tracks only what it needs: strings (so brackets inside them do not count) and bracket depth.
Elements are not checked here beyond their boundaries; the caller's ``orjson.loads`` of each one
is the syntax check. Other top-level keys are kept whole (they are small; over ``max_other_bytes``
is an error) so that the caller can reject them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_WS = b" \t\r\n"
_STRUCTURAL = re.compile(rb'[\[\]{}"]')
#: The body of a JSON string from just after its opening quote: stops at the closing quote, or at
#: a backslash with nothing after it yet, or at the end of the buffer.
_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)
_SCALAR_END = re.compile(rb"[,\]}\s]")


class JsonStreamError(ValueError):
    """The body is not a JSON object of the expected shape; the message says where."""


@dataclass
class _Value:
    """A resumable scan of one JSON value starting at ``start``."""

    start: int
    depth: int = 0
    in_string: bool = False
    kind: str = ""  # "composite", "string" or "scalar" once the first byte is seen


@dataclass
class ArrayFieldSplitter:
    """Feed the body in pieces; get the raw bytes of every element of ``field_name`` in order."""

    field_name: str
    #: An element larger than this raises ``JsonStreamError`` (with ``too_large`` set).
    max_element_bytes: int = 1 << 30
    max_other_bytes: int = 1 << 20
    #: Other top-level keys and their raw values.
    others: dict[str, bytes] = field(default_factory=dict)
    seen_field: bool = False
    elements: int = 0
    too_large: bool = False

    _buf: bytearray = field(default_factory=bytearray)
    _pos: int = 0
    _state: str = "start"
    _key: str = ""
    _value: _Value | None = None

    # ---- public ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the body; the elements that are now complete."""
        self._buf += data
        out: list[bytes] = []
        self._run(out, eof=False)
        # Drop what is consumed (once per feed: cheap, and the buffer stays one element long).
        keep = self._value.start if self._value is not None else self._pos
        if keep:
            del self._buf[:keep]
            self._pos -= keep
            if self._value is not None:
                self._value.start = 0
        return out

    def finish(self) -> list[bytes]:
        """The body has ended: the last elements, or ``JsonStreamError`` if it is incomplete."""
        out: list[bytes] = []
        self._run(out, eof=True)
        if self._state != "done":
            raise JsonStreamError("The request body is not valid JSON: it ended before the top-level object closed.")
        return out

    # ---- the state machine -------------------------------------------------------------------
    def _skip_ws(self) -> bool:
        """Move past whitespace; False when the buffer ran out."""
        buf, n = self._buf, len(self._buf)
        while self._pos < n and buf[self._pos] in _WS:
            self._pos += 1
        return self._pos < n

    def _char(self) -> int:
        return self._buf[self._pos]

    def _fail(self, what: str) -> JsonStreamError:
        snippet = bytes(self._buf[self._pos : self._pos + 20]).decode("utf-8", "replace")
        return JsonStreamError(f"The request body is not valid JSON: expected {what}, found {snippet!r}.")

    def _run(self, out: list[bytes], eof: bool) -> None:
        while True:
            state = self._state
            if state == "done":
                if self._skip_ws():
                    raise JsonStreamError("The request body is not valid JSON: extra data after the top-level object.")
                return
            if state in ("element", "other_value"):
                value = self._value
                assert value is not None
                end = self._scan_value(value, eof)
                if end is None:
                    size = len(self._buf) - value.start
                    limit = self.max_element_bytes if state == "element" else self.max_other_bytes
                    if size > limit:
                        self.too_large = state == "element"
                        where = f"{self.field_name}.{self.elements}" if state == "element" else self._key
                        raise JsonStreamError(f"{where}: larger than the {limit} byte limit.")
                    return
                raw = bytes(self._buf[value.start : end])
                self._value = None
                self._pos = end
                if state == "element":
                    if end - value.start > self.max_element_bytes:
                        self.too_large = True
                        raise JsonStreamError(
                            f"{self.field_name}.{self.elements}: larger than the {self.max_element_bytes} byte limit.")
                    out.append(raw)
                    self.elements += 1
                    self._state = "after_element"
                else:
                    if len(raw) > self.max_other_bytes:
                        raise JsonStreamError(f"{self._key}: larger than the {self.max_other_bytes} byte limit.")
                    self.others[self._key] = raw
                    self._state = "after_value"
                continue
            if not self._skip_ws():
                return
            c = self._char()
            if state == "start":
                if c != ord("{"):
                    raise self._fail("a JSON object")
                self._pos += 1
                self._state = "key_or_end"
            elif state in ("key_or_end", "key"):
                if c == ord("}") and state == "key_or_end":
                    self._pos += 1
                    self._state = "done"
                    continue
                if c != ord('"'):
                    raise self._fail("a key in double quotes")
                if not self._read_key(eof):
                    return
                self._state = "colon"
            elif state == "colon":
                if c != ord(":"):
                    raise self._fail("':'")
                self._pos += 1
                self._state = "value"
            elif state == "value":
                if self._key == self.field_name:
                    if self.seen_field:
                        raise JsonStreamError(f"{self.field_name}: given twice.")
                    self.seen_field = True
                    if c != ord("["):
                        raise JsonStreamError(f"{self.field_name}: Input should be a valid list.")
                    self._pos += 1
                    self._state = "first_element"
                else:
                    if self._key in self.others:
                        raise JsonStreamError(f"{self._key}: given twice.")
                    self._value = _Value(start=self._pos)
                    self._state = "other_value"
            elif state == "first_element":
                if c == ord("]"):
                    self._pos += 1
                    self._state = "after_value"
                else:
                    self._value = _Value(start=self._pos)
                    self._state = "element"
            elif state == "after_element":
                if c == ord(","):
                    self._pos += 1
                    if not self._skip_ws():
                        self._state = "next_element"
                        return
                    self._value = _Value(start=self._pos)
                    self._state = "element"
                elif c == ord("]"):
                    self._pos += 1
                    self._state = "after_value"
                else:
                    raise self._fail(f"',' or ']' after {self.field_name}.{self.elements - 1}")
            elif state == "next_element":
                self._value = _Value(start=self._pos)
                self._state = "element"
            elif state == "after_value":
                if c == ord(","):
                    self._pos += 1
                    self._state = "key"
                elif c == ord("}"):
                    self._pos += 1
                    self._state = "done"
                else:
                    raise self._fail("',' or '}'")
            else:  # pragma: no cover - every state is handled above
                raise AssertionError(state)

    def _read_key(self, eof: bool) -> bool:
        """Read the key string at ``_pos`` (keys are small: wait until it is whole)."""
        m = _STRING_BODY.match(self._buf, self._pos + 1)
        assert m is not None
        end = m.end()
        if end >= len(self._buf) or self._buf[end] != ord('"'):
            if eof:
                raise JsonStreamError("The request body is not valid JSON: a key is not closed.")
            if end - self._pos > self.max_other_bytes:
                raise JsonStreamError("The request body is not valid JSON: a key is too long.")
            return False
        try:
            self._key = json.loads(bytes(self._buf[self._pos : end + 1]))
        except ValueError:
            raise self._fail("a valid key") from None
        self._pos = end + 1
        return True

    def _scan_value(self, v: _Value, eof: bool) -> int | None:
        """The end offset of the value, or None when more bytes are needed."""
        buf = self._buf
        n = len(buf)
        pos = max(self._pos, v.start)
        if not v.kind:
            c = buf[v.start]
            if c in b"{[":
                v.kind, v.depth, pos = "composite", 1, v.start + 1
            elif c == ord('"'):
                v.kind, v.in_string, pos = "string", True, v.start + 1
            else:
                v.kind = "scalar"
                pos = v.start
        if v.kind == "scalar":
            m = _SCALAR_END.search(buf, pos)
            if m is None:
                self._pos = n
                return n if eof and n > v.start else None
            if m.start() == v.start:
                raise self._fail("a value")
            return m.start()
        while True:
            if v.in_string:
                m = _STRING_BODY.match(buf, pos)
                assert m is not None
                end = m.end()
                if end < n and buf[end] == ord('"'):
                    v.in_string = False
                    pos = end + 1
                    if v.kind == "string":
                        return pos
                    continue
                self._pos = end  # resume the string here (possibly at a lone trailing backslash)
                return None
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                self._pos = n
                return None
            c = buf[m.start()]
            pos = m.end()
            if c == ord('"'):
                v.in_string = True
            elif c in b"{[":
                v.depth += 1
            else:
                v.depth -= 1
                if v.depth == 0:
                    return pos


#: A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: Every byte but a bracket is deleted, and both kinds of bracket become ``[ ]`` (depth is depth).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_RUNS = re.compile(rb"\[+|\]+")
_OPEN = ord("[")


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests arrays and objects more than ``limit`` levels deep.

    Strings are skipped (their brackets do not count). For text that is not valid JSON the answer
    is a best guess (an unclosed bracket counts as open), never an exception. Cost: two ``count``s
    for the usual value (at most ``limit`` opening brackets in all). Otherwise, in C, the strings
    are cut out and passes remove every innermost ``[]`` while there are many (what is left after
    ``p`` passes is exactly ``p`` levels shallower; at most about 6 passes' worth of work); then
    the runs of ``[`` and of ``]`` that are left are summed in Python (about 1 s for the worst
    16 MB line measured, on 2 busy CPUs).
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(_ONE_KIND, _NOT_BRACKETS)
    peeled, budget = 0, 12 * len(brackets)
    while peeled < limit and budget > 0:
        # Peeling pays while it removes many runs: each innermost "[]" ends a run.
        leaves = brackets.count(b"[]")
        if leaves * 90 < len(brackets):
            break
        budget -= 2 * len(brackets)
        brackets, peeled = brackets.replace(b"[]", b""), peeled + 1
    depth, deepest = 0, limit - peeled
    for run in _RUNS.findall(brackets):
        depth += len(run) if run[0] == _OPEN else -len(run)
        if depth > deepest:
            return True
    return False
