"""A secret (an upstream API key): read once, normalised, never shown, removed from whatever quotes it.

Every place that loads a key uses ``Secret.from_env``: the value of the named environment variable
with surrounding whitespace (a trailing newline or CR, usual for secrets read from files) removed; a
value that is empty, or holds control or non-ASCII characters, is refused with a message that names
the variable and never the value.

Redaction works on what is finally written, whatever the encoding: ``scrub``/``scrub_bytes`` replace
the key written plainly or with any of its characters escaped as JSON writes them (``\\/``,
``\\u002d``, ``\\\\u002d`` once more when nested in a JSON string) or percent-encoded; ``redact``
walks a parsed JSON value (every string and object key), so escapes a serializer undoes are undone
before matching.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from freight.domain.errors import ConfigError

MASK = "***"


def redact_url(url: str, *, keep_user: bool = False) -> str:
    """A URL without its credentials, for logs, reprs and messages: ``user:password@`` dropped, or with
    ``keep_user`` the password alone masked (``user:***@``). A URL that does not parse is masked whole."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK
    if parts.password is None and (keep_user or parts.username is None):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username or ''}:{MASK}@" if keep_user else ""
    return parts._replace(netloc=user + host + (f":{port}" if port is not None else "")).geturl()


def _hex_class(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


def _char_pattern(c: str) -> str:
    code = f"{ord(c):04x}"
    alternatives = [re.escape(c), r"\\+u" + _hex_class(code), "%" + _hex_class(code[2:])]
    if not c.isalnum():
        alternatives.append(r"\\+" + re.escape(c))  # \/ \" \\ and friends
    return "(?:" + "|".join(alternatives) + ")"


def normalize_secret(value: str, name: str, where: str = "") -> str:
    """The key without surrounding whitespace; ConfigError (naming ``name``, never the value) if unusable."""
    text = value.strip()
    prefix = f"{where}: " if where else ""
    if not text:
        raise ConfigError(f"{prefix}the environment variable {name} (api_key_env) is empty")
    bad = [c for c in text if not (c.isascii() and c.isprintable())]
    if bad:
        raise ConfigError(f"{prefix}the environment variable {name} (api_key_env) holds control or non-ASCII "
                          f"characters inside the key ({len(bad)} of them); its value is not shown")
    return text


class Secret:
    """A string that never shows itself in a repr, str or format, and removes itself from text."""

    __slots__ = ("_bytes_re", "_text_re", "_value")

    def __init__(self, value: str | None):
        self._value = value or None
        self._text_re: re.Pattern[str] | None = None
        self._bytes_re: re.Pattern[bytes] | None = None
        if self._value:
            pattern = "".join(_char_pattern(c) for c in self._value)
            self._text_re = re.compile(pattern)
            self._bytes_re = re.compile(pattern.encode("ascii"))

    @classmethod
    def from_env(cls, name: str | None, env: Mapping[str, str], where: str = "") -> Secret:
        """The key in the environment variable ``name`` (None: no key)."""
        if name is None:
            return cls(None)
        value = env.get(name)
        if value is None or not value.strip():
            prefix = f"{where}: " if where else ""
            state = "is not set" if value is None else "is empty"
            raise ConfigError(f"{prefix}the environment variable {name} (api_key_env) {state}")
        return cls(normalize_secret(value, name, where))

    def __bool__(self) -> bool:
        return self._value is not None

    def reveal(self) -> str | None:
        return self._value

    def fingerprint(self) -> str | None:
        return None if self._value is None else hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def scrub(self, text: str) -> str:
        """``text`` with the key, in any encoding, replaced by ``***``."""
        if self._text_re is None:
            return text
        return self._text_re.sub(MASK, text)

    def scrub_bytes(self, data: bytes) -> bytes:
        if self._bytes_re is None:
            return data
        return self._bytes_re.sub(MASK.encode(), data)

    def redact(self, obj: Any, depth: int = 0) -> tuple[Any, bool]:
        """(a parsed JSON value with the key removed from every string and object key, whether it changed)."""
        if self._text_re is None:
            return obj, False
        if isinstance(obj, str):
            clean = self.scrub(obj)
            return clean, clean != obj
        if depth > 256:
            return obj, False
        if isinstance(obj, list):
            changed = False
            out: list[Any] = []
            for item in obj:
                if isinstance(item, int | float) or item is None:
                    out.append(item)
                    continue
                value, hit = self.redact(item, depth + 1)
                changed |= hit
                out.append(value)
            return (out, True) if changed else (obj, False)
        if isinstance(obj, dict):
            changed = False
            result: dict[Any, Any] = {}
            for key, item in obj.items():
                new_key, hit_key = self.redact(key, depth + 1) if isinstance(key, str) else (key, False)
                value, hit = self.redact(item, depth + 1)
                changed |= hit or hit_key
                result[new_key] = value
            return (result, True) if changed else (obj, False)
        return obj, False

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__
