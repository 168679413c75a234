"""The options several commands share, declared once (each with its environment variable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

config_option = click.option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="freight.toml to read (env: FREIGHT_CONFIG; default ./freight.toml if present).")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where freight keeps its database (and its files, without --blobs) (env: FREIGHT_DATA_DIR).")
database_url_option = click.option(
    "--database-url", default=None, metavar="URL",
    help="PostgreSQL shared by every freight process, postgresql://user@host:port/db (env: FREIGHT_DATABASE_URL; "
         "default: SQLite in the data dir). Run `freight migrate` on it first.")
redis_url_option = click.option(
    "--redis-url", default=None, metavar="URL",
    help="Redis where every process shares remote upstreams' rpm/tpm limits, redis://host:6379/0 "
         "(env: FREIGHT_REDIS_URL; default: each process keeps to the limits alone). See docs/deployment.md.")
blobs_option = click.option(
    "--blobs", default=None, metavar="DIR|s3://BUCKET/PREFIX",
    help="Where file bytes live: a directory all processes share, or an S3-compatible bucket "
         "(env: FREIGHT_BLOBS; default DATA_DIR/blobs). See docs/deployment.md.")


def load(config: Path | None, data_dir: Path | None, **kw: Any) -> Any:
    """The Settings of a command: its options over the environment over freight.toml."""
    from freight.config import load_settings

    return load_settings(config, data_dir=data_dir, **kw)
