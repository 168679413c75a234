"""``freight config``: every setting's value and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from freight.cli.options import blobs_option, config_option, data_dir_option, database_url_option, redis_url_option
from freight.cli.options import load as _settings
from freight.config.models import keys_of
from freight.config.registry import BY_NAME
from freight.config.settings import Settings
from freight.domain.secrets import redact_url
from freight.wire import jsonx


def without_password(url: str) -> str:
    """A URL with the password of its user part masked (database and broker URLs may carry one)."""
    return redact_url(url, keep_user=True)


def _shown(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return without_password(value)
    return value


def _zero(name: str) -> str | None:
    """What an explicit 0 means for this setting ("no limit"), where 0 turns it off."""
    s = BY_NAME.get(name)
    return s.zero if s is not None else None


def _given(name: str, value: Any, source: str) -> Any:
    """The value as shown: an explicit 0 that turns a limit off reads as None inside freight, and as 0 here."""
    if value is None and source != "default" and _zero(name) is not None:
        return 0
    return _shown(value)


@click.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: each setting's value and source.")
@data_dir_option
@database_url_option
@redis_url_option
@blobs_option
@config_option
def config_command(as_json: bool, data_dir: Path | None, database_url: str | None, redis_url: str | None,
                   blobs: str | None, config: Path | None) -> None:
    """Print every setting's value and where it came from: a flag, a variable, freight.toml or the default
    (docs/configuration.md). Passwords in URLs are masked."""
    settings = _settings(config, data_dir, database_url=database_url, redis_url=redis_url, blobs=blobs)
    given = {name: {"value": _given(name, value, source), "source": source}
             for name, (value, source) in settings.given.items()}
    tables = _tables(settings)
    if as_json:
        out: dict[str, Any] = {"config_file": str(settings.config_path) if settings.config_path else None,
                               "settings": given}
        for section, entries in tables.items():
            out[section] = {name: {k: _shown(v) for k, (v, _) in table.items()} for name, table in entries.items()}
        click.echo(jsonx.dumps(out).decode())
        return
    click.echo(f"# config file: {settings.config_path or '(none)'}")
    width = max(len(name) for name in given)
    for name, item in given.items():
        value = "(none)" if item["value"] is None else jsonx.dumps(item["value"]).decode()
        if item["value"] == 0 and (zero := _zero(name)) is not None:
            value += f" ({zero})"
        click.echo(f"{name:<{width}} = {value}  # {item['source']}")
    for section, entries in tables.items():
        for name, table in entries.items():
            for key, (v, where) in table.items():
                click.echo(f'{section}."{name}".{key} = {jsonx.dumps(_shown(v)).decode()}  # {where}')


Sourced = dict[str, tuple[Any, str]]


def _tables(settings: Settings) -> dict[str, dict[str, Sourced]]:
    """The named tables of freight.toml, each key's value and where it came from: each model's keys (its
    backend's defaults filled in), each project's and each intake's (unset ones left out)."""
    file = str(settings.config_path) if settings.config_path else "default"
    given = settings.file_tables.get("models") or {}
    models: dict[str, Sourced] = {}
    for name, table in settings.model_tables().items():
        where = file if settings.models else "bundled default"
        shown: Sourced = {key: (value, where) for key, value in (given.get(name) or table).items()}
        for s in keys_of(str(table.get("backend"))):
            if s.key not in shown and s.default is not None:
                shown[s.key] = (s.default, "default")
        models[name] = shown
    written = settings.file_tables.get("intake") or {}
    return {"models": models,
            "projects": {name: {k: (v, file) for k, v in table.items()}
                         for name, table in (settings.file_tables.get("projects") or {}).items()},
            # An intake's key is the file's where its table gives it, else its default.
            "intake": {name: {k: (v, file if k in (written.get(name) or {}) else "default")
                              for k, v in i.as_table().items() if v is not None}
                       for name, i in settings.intake.items()}}
