"""Shared fixtures: real ``freight serve`` subprocesses (see tests/servers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import FreightServer, config_text


@pytest.fixture(scope="module")
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FreightServer]]:
    """A factory for servers that live until the end of the module: make_server(config=..., start=True)."""
    servers: list[FreightServer] = []

    def make(config: str | None = None, *, start: bool = True) -> FreightServer:
        root: Path = tmp_path_factory.mktemp("freight")
        path = root / "freight.toml"
        path.write_text(config if config is not None else config_text())
        server = FreightServer(root / "data", path, log_path=root / "server.log")
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
