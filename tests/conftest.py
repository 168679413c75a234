"""Shared fixtures: real ``freight serve`` subprocesses (see tests/servers.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import FreightServer, config_text, postgres_database

#: tests/integrations/ (Airflow, Dagster, dbt) runs in its own virtualenv from `make test`
#: (Makefile: test-integrations), with FREIGHT_INTEGRATION_TESTS=1; the main run leaves it out.
collect_ignore = [] if os.environ.get("FREIGHT_INTEGRATION_TESTS") else ["integrations"]


@pytest.fixture(scope="module")
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FreightServer]]:
    """A factory for servers that live until the end of the module: make_server(config=..., start=True)."""
    servers: list[FreightServer] = []

    def make(config: str | None = None, *, start: bool = True, database_url: str | None = None) -> FreightServer:
        root: Path = tmp_path_factory.mktemp("freight")
        path = root / "freight.toml"
        path.write_text(config if config is not None else config_text())
        server = FreightServer(root / "data", path, log_path=root / "server.log", database_url=database_url)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for this module's servers, made by ``freight migrate``'s migrations, dropped after."""
    from freight.store.postgres.migrate import migrate

    with postgres_database("freight_server") as url:
        migrate(url)
        yield url



@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """A module's servers run once on each store: None (SQLite in the data dir), then PostgreSQL."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None
