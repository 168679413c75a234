"""``freight keys``: make, list and revoke the API keys of a data dir.

These commands open the data dir's database directly, or PostgreSQL at ``FREIGHT_DATABASE_URL`` /
``[server] database_url`` (no server needed, and a running server sees a new key at once); they do
not take the engine's lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from freight.cli.options import config_option, data_dir_option, database_url_option
from freight.cli.options import load as load_settings
from freight.domain.errors import FreightError
from freight.services.keys import KeyService


@contextmanager
def _keys(config: Path | None, data_dir: Path | None, database_url: str | None) -> Iterator[KeyService]:
    from freight.runtime import build_runtime

    runtime = build_runtime(load_settings(config, data_dir, database_url=database_url), lock=False, models=False)
    try:
        yield runtime.keys
    finally:
        runtime.close()


@click.group()
def keys() -> None:
    """Manage API keys (each belongs to one project)."""


@keys.command("create")
@click.option("--project", required=True, help="The project the key gives access to (made on first use).")
@data_dir_option
@database_url_option
@config_option
def create(project: str, data_dir: Path | None, database_url: str | None, config: Path | None) -> None:
    """Make a new key and print it, once (on the last line); only its hash is stored."""
    with _keys(config, data_dir, database_url) as service:
        try:
            key, token = service.create(project)
        except FreightError as exc:
            raise click.BadParameter(exc.message, param_hint="--project") from None
    click.echo(f"Created key {key.id} for project {key.project!r}. Keep it now: freight stores only its hash, "
               "so it cannot be shown again.", err=True)
    click.echo(token)


@keys.command("list")
@data_dir_option
@database_url_option
@config_option
def list_keys(data_dir: Path | None, database_url: str | None, config: Path | None) -> None:
    """List key ids, their projects, and whether they are revoked (never the keys themselves)."""
    with _keys(config, data_dir, database_url) as service:
        found = service.list()
    if not found:
        click.echo("no API keys: freight serve accepts requests on loopback only, all in project 'default'")
        return
    for key in found:
        created = dt.datetime.fromtimestamp(key.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        state = "revoked" if key.revoked_at is not None else "active"
        click.echo(f"{key.id}  {key.project}  created {created} UTC  {state}")


@keys.command("revoke")
@click.argument("key_id")
@data_dir_option
@database_url_option
@config_option
def revoke(key_id: str, data_dir: Path | None, database_url: str | None, config: Path | None) -> None:
    """Revoke a key by its id (takes effect at once, also on a running server)."""
    with _keys(config, data_dir, database_url) as service:
        key = service.revoke(key_id)
    click.echo(f"revoked {key.id} (project {key.project!r})")
