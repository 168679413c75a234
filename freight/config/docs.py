"""The reference tables of freight's settings, generated from freight.config.registry.

A page holds a generated part between ``<!-- settings: SECTION ... -->`` (the sections, or ``env`` for
the variables read outside freight.toml) and ``<!-- /settings -->``.
``python -m freight.config.docs`` rewrites those parts in docs/*.md; ``--check`` (run by ``make lint``)
fails, naming the page, when one is not what the registry says.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from freight.config.load import duration_text
from freight.config.models import BACKEND_OPTIONS, BACKENDS, COMMON, PLACEMENT, RAY_BACKENDS
from freight.config.registry import ENV_ONLY, SECTIONS, Setting, section_settings

_BLOCK = re.compile(r"(<!-- settings: ([^>]*?) -->\n)(.*?)(<!-- /settings -->)", re.S)
_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "duration": "duration",
          "path": "path", "choice": "string", "hours": "list of windows", "table": "table", "list": "list",
          "any": "any"}


def _code(text: str) -> str:
    return f"`{text}`"


def _default(s: Setting) -> str:
    value: Any = s.default
    if s.shown_default is not None:
        plain = re.fullmatch(r"[\d.]+|true|false", s.shown_default) is None
        return s.shown_default if plain else _code(s.shown_default)
    if value is None:
        return "(none)"
    if s.kind == "bool":
        return _code("true" if value else "false")
    if s.kind == "duration":
        return _code(f'"{duration_text(int(value))}"')
    if s.kind in ("str", "choice", "path"):
        return _code(f'"{value}"')
    text = _code(f"{value:_}".replace("_", "") if isinstance(value, int) else str(value))
    if s.key.endswith("bytes") and isinstance(value, int) and value >= 1 << 20:
        text += f" ({value / (1 << 20):g} MiB)"
    return text


def _bounds(s: Setting) -> str:
    parts = []
    if s.choices:
        parts.append("one of " + ", ".join(_code(c) for c in s.choices))
    if s.zero is not None:
        parts.append(f"0: {s.zero}")
    elif s.min is not None:
        parts.append(f"at least {s.min:g}" + ("s" if s.kind == "duration" else ""))
    if s.above is not None:
        parts.append(f"more than {s.above:g}")
    if s.max is not None:
        parts.append(f"at most {s.max:g}")
    text = ", ".join(parts)
    return f" {text[0].upper()}{text[1:]}." if parts else ""


def _where(s: Setting) -> str:
    names = [_code(n) for n in (s.env_var, s.flag) if n]
    return ", ".join(names) or "—"


def section_table(section: str) -> str:
    """One section's table; a section of one table per name has no variables or flags."""
    named = section.endswith(".*")
    title = f'[{section.removesuffix(".*")}."name"]' if named else f"[{section}]"
    head = "| key | type | default | meaning |" if named else "| key | type | default | variable, flag | meaning |"
    rows = [f"### `{title}`", "", head, "|---" * head.count(" | ") + "|---|"]
    for s in section_settings(section):
        where = "" if named else f" {_where(s)} |"
        rows.append(f"| `{s.key}` | {_TYPES[s.kind]} | {_default(s)} |{where} {s.help}{_bounds(s)} |")
    return "\n".join(rows) + "\n"


def _rows(settings: tuple[Setting, ...]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in settings:
        kind = s.shown_type or _TYPES[s.kind]
        rows.append(f"| `{s.key}` | {kind} | {_default(s)} | {s.help}{_bounds(s)} |")
    return rows


def models_tables(backends: tuple[str, ...] = BACKENDS) -> str:
    """The keys of a model's table: those of every backend, Ray's, then each backend's own."""
    parts = []
    if backends == BACKENDS:
        parts.append("\n".join(["### Every model", "", *_rows(COMMON)]) + "\n")
        ray = ", ".join(_code(b) for b in RAY_BACKENDS)
        parts.append("\n".join([f'### `placement = "ray"` ({ray})', "", *_rows(PLACEMENT)]) + "\n")
    for backend in backends:
        parts.append("\n".join([f'### `backend = "{backend}"`', "", *_rows(BACKEND_OPTIONS[backend])]) + "\n")
    return "\n".join(parts)


def env_table() -> str:
    rows = ["### Other variables", "", "| variable | meaning |", "|---|---|"]
    rows += [f"| {', '.join(_code(n) for n in e.names)} | {e.help} |" for e in ENV_ONLY]
    return "\n".join(rows) + "\n"


def render(spec: str) -> str:
    """The generated part for a marker's spec: sections separated by spaces, "all", or "env"."""
    names = [n for name in spec.split() for n in (SECTIONS if name == "all" else (name,))]
    parts = []
    for name in names:
        if name == "env":
            parts.append(env_table())
        elif name == "models":
            parts.append(models_tables())
        elif name.startswith("models.") and name.removeprefix("models.") in BACKEND_OPTIONS:
            parts.append(models_tables((name.removeprefix("models."),)))
        elif name in SECTIONS:
            parts.append(section_table(name))
        else:
            raise ValueError(f"unknown settings section in a docs marker: {name!r}")
    return "\n".join(parts)


def regenerate(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="Fail when a page is out of date; change nothing.")
    parser.add_argument("pages", nargs="*", type=Path, default=sorted(Path("docs").glob("*.md")))
    args = parser.parse_args(argv)
    stale = []
    for page in args.pages:
        text = page.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"settings tables out of date in {names}: run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
