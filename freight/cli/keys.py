"""``freight keys``: make, list and revoke the API keys of a data dir.

These commands open the data dir's database directly, or PostgreSQL at ``FREIGHT_DATABASE_URL`` /
``[server] database_url`` (no server needed, and a running server sees a new key at once); they do
not take the engine's lock.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from freight.domain.errors import FreightError
from freight.services.keys import KeyService
from freight.store import open_store

config_option = click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                             help="freight.toml to read (env: FREIGHT_CONFIG; default ./freight.toml if present).")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                               help="The data dir of the server the key is for (env: FREIGHT_DATA_DIR).")


class _Clock:
    def now(self) -> float:
        return time.time()


@contextmanager
def _keys(config: Path | None, data_dir: Path | None) -> Iterator[KeyService]:
    from freight.config import load_settings

    settings = load_settings(config, data_dir=data_dir)
    store = open_store(settings.database_url, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous,
                       pool_size=1)
    try:
        yield KeyService(store, _Clock())
    finally:
        store.close()


@click.group()
def keys() -> None:
    """Manage API keys (each belongs to one project)."""


@keys.command("create")
@click.option("--project", required=True, help="The project the key gives access to (made on first use).")
@data_dir_option
@config_option
def create(project: str, data_dir: Path | None, config: Path | None) -> None:
    """Make a new key and print it, once (on the last line); only its hash is stored."""
    with _keys(config, data_dir) as service:
        try:
            key, token = service.create(project)
        except FreightError as exc:
            raise click.BadParameter(exc.message, param_hint="--project") from None
    click.echo(f"Created key {key.id} for project {key.project!r}. Keep it now: freight stores only its hash, "
               "so it cannot be shown again.", err=True)
    click.echo(token)


@keys.command("list")
@data_dir_option
@config_option
def list_keys(data_dir: Path | None, config: Path | None) -> None:
    """List key ids, their projects, and whether they are revoked (never the keys themselves)."""
    with _keys(config, data_dir) as service:
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
@config_option
def revoke(key_id: str, data_dir: Path | None, config: Path | None) -> None:
    """Revoke a key by its id (takes effect at once, also on a running server)."""
    with _keys(config, data_dir) as service:
        key = service.revoke(key_id)
    click.echo(f"revoked {key.id} (project {key.project!r})")
