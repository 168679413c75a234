"""Reading the declared settings (freight.config.registry) from freight.toml, the environment and the
flags, with the same checks whichever of them a value comes from.

Precedence: flag > environment variable > freight.toml > default. An empty variable counts as unset.
A value given is used as given: an explicit 0 is checked against the setting's bounds (and means "no
limit" only where the setting says so), never quietly replaced by the default.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from freight.config.registry import OTHER_SECTIONS, SECTIONS, SETTINGS, Setting, known_variables, section_settings
from freight.domain.durations import parse_duration_s
from freight.domain.errors import ConfigError

DEFAULT = "default"
FILE = "freight.toml"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass
class Resolved:
    #: "section.key" -> value (None: unset), for every fixed section's settings.
    values: dict[str, Any] = field(default_factory=dict)
    #: "section.key" -> where the value came from: "default", "freight.toml", a variable or a flag.
    sources: dict[str, str] = field(default_factory=dict)
    #: Sections of one table per name ("projects", "intake"): name -> key -> value, for the keys given.
    named: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def misspelt_variables(env: Mapping[str, str]) -> list[str]:
    """``FREIGHT_*`` variables that are not freight's but nearly one of its names (a typo is otherwise
    silently ignored): "NAME (did you mean OTHER?)". Others (a user's own key variable) are not named."""
    known = known_variables()
    out = []
    for name in sorted(env):
        if name.startswith("FREIGHT_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                out.append(f"{name} (did you mean {close[0]}?)")
    return out


def _unknown(given: set[str], known: list[str], where: str) -> ConfigError:
    hints = []
    for name in sorted(given):
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ConfigError(f"unknown key(s) in {where}: {', '.join(hints)}")


def check_table(table: Mapping[str, Any], settings: tuple[Setting, ...], where: str) -> None:
    known = [s.key for s in settings]
    unknown = set(table) - set(known)
    if unknown:
        raise _unknown(unknown, known, where)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _describe(value: Any) -> str:
    return "a table" if isinstance(value, dict) else "a list" if isinstance(value, list) else repr(value)


def _from_text(s: Setting, text: str, where: str) -> Any:
    """An environment variable's text as the value freight.toml would hold."""
    text = text.strip()
    try:
        if s.kind == "int":
            return int(text)
        if s.kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{where} must be a number, got {text!r}") from None
    if s.kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{where} must be true or false (1/0, yes/no, on/off), got {text!r}")
    if s.kind == "duration" and text.isdigit():
        return int(text)
    if s.kind == "hours":
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _typed(s: Setting, value: Any, where: str) -> Any:
    kind, bad = s.kind, False
    if kind == "int":
        bad = isinstance(value, bool) or not isinstance(value, int)
    elif kind == "float":
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        value = value if bad else float(value)
        if not bad and not math.isfinite(value):  # (nan passes every bound, and inf is no setting)
            raise ConfigError(f"{where} must be a finite number, got {value}")
    elif kind == "bool":
        bad = not isinstance(value, bool)
    elif kind == "duration":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a duration (seconds, or like \"90s\", \"30m\", \"12h\", \"7d\"), "
                              f"got {_describe(value)}")
        try:
            return parse_duration_s(value.strip())
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif kind == "path":
        if isinstance(value, Path):
            return value.expanduser()
        bad = not isinstance(value, str) or not value
        value = value if bad else Path(value).expanduser()
    elif kind == "choice":
        matches = [c for c in s.choices if isinstance(value, str) and c.lower() == value.strip().lower()]
        if not matches:
            raise ConfigError(f"{where} must be one of {', '.join(repr(c) for c in s.choices)}, "
                              f"got {_describe(value)}")
        return matches[0]
    elif kind == "hours":
        bad = not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value)
        if bad:
            raise ConfigError(f"{where} must be a list of windows like [\"22:00-06:00\"], got {_describe(value)}")
        return list(value)
    elif kind == "table":
        bad = not isinstance(value, dict)
    elif kind == "list":
        bad = not isinstance(value, list)
    elif kind == "str":
        bad = not isinstance(value, str)
    if bad:
        expected = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
                    "path": "a path", "table": "a table", "list": "a list"}[kind]
        raise ConfigError(f"{where} must be {expected}, got {_describe(value)} ({type(value).__name__})")
    return value


def _bounded(s: Setting, value: Any, where: str) -> Any:
    if s.kind not in ("int", "float", "duration"):
        return value
    if s.zero is not None and value == 0:
        return None
    if s.min is not None and value < s.min:
        floor = f"0 ({s.zero}) or more" if s.zero is not None else f"at least {_number(s.min)}"
        raise ConfigError(f"{where} must be {floor}, got {_number(value)}")
    if s.above is not None and value <= s.above:
        raise ConfigError(f"{where} must be more than {_number(s.above)}, got {_number(value)}")
    if s.max is not None and value > s.max:
        raise ConfigError(f"{where} must be at most {_number(s.max)}, got {_number(value)}")
    return value


def _url(s: Setting, value: Any, where: str) -> Any:
    """A URL setting (``schemes``) with one of its schemes, or, where ``paths``, a path without one."""
    if not s.schemes or not isinstance(value, str):
        return value
    scheme, sep, _ = value.partition("://")
    if sep and scheme in s.schemes:
        try:  # (a port that is not a number: caught here, not when a backend first connects)
            _ = urlsplit(value).port
        except ValueError as exc:  # (the value not repeated: it may hold a password)
            raise ConfigError(f"{where} is not a valid URL: {exc}") from None
        return value
    if not sep and s.paths and value:
        return value
    starts = [f"{x}://" for x in s.schemes]
    wanted = "a URL starting " + (", ".join(starts[:-1]) + " or " + starts[-1] if len(starts) > 1 else starts[0])
    raise ConfigError(f"{where} must be {'a directory or ' if s.paths else ''}{wanted}, got {value!r}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def parse(s: Setting, raw: Any, where: str, *, text: bool = False) -> Any:
    """``raw`` (from freight.toml or a flag; with ``text``, an environment variable) as the setting's
    value; ConfigError naming ``where`` when it is not one."""
    return _url(s, _bounded(s, _typed(s, _from_text(s, raw, where) if text else raw, where), where), where)


def resolve(data: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any],
            path: Path | None = None) -> Resolved:
    """Every declared setting's value and source. ``flags``: "section.key" -> the flag's value (None:
    not given)."""
    file = str(path) if path is not None else FILE
    fixed = [name for name in SECTIONS if not name.endswith(".*")]
    known_sections = fixed + [name.removesuffix(".*") for name in SECTIONS if name.endswith(".*")]
    unknown = set(data) - set(known_sections) - set(OTHER_SECTIONS)
    if unknown:
        raise _unknown(unknown, known_sections + list(OTHER_SECTIONS), f"{file} (sections)")
    out = Resolved()
    for section in fixed:
        check_table(_table(data, section), section_settings(section), f"[{section}] of {file}")
    for s in SETTINGS:
        if s.section.endswith(".*"):
            continue
        table = _table(data, s.section)
        flag, var = flags.get(s.name), s.env_var
        from_env = bool(var and env.get(var)) and (s.env_over_file or s.key not in table)
        if flag is not None:
            value, source = parse(s, flag, s.flag or s.name), s.flag or "flag"
        elif from_env and var:
            value, source = parse(s, env[var], var, text=True), var
        elif s.key in table:
            value, source = parse(s, table[s.key], f"{s.name} in {file}"), file
        else:
            value, source = s.default, DEFAULT
        out.values[s.name], out.sources[s.name] = value, source
    for section in SECTIONS:
        if section.endswith(".*"):
            out.named[section.removesuffix(".*")] = _named(data, section.removesuffix(".*"),
                                                           section_settings(section), file)
    return out


def _named(data: Mapping[str, Any], section: str, settings: tuple[Setting, ...],
           file: str) -> dict[str, dict[str, Any]]:
    """One table per name (``[projects."name"]``): the keys each gives, checked."""
    found: dict[str, dict[str, Any]] = {}
    for name, table in _table(data, section).items():
        where = f'[{section}."{name}"]'
        if not isinstance(table, dict):
            raise ConfigError(f"{where} of {file} must be a table")
        check_table(table, settings, f"{where} of {file}")
        found[str(name)] = {s.key: parse(s, table[s.key], f'{section}."{name}".{s.key} in {file}')
                            for s in settings if s.key in table}
    return found
