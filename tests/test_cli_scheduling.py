"""``freight pause``, ``freight resume`` and ``freight priority`` against a running server."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from servers import SCRIPTED_SLOW, FreightServer, config_text, request_line, wait_for
from test_cli import freight, write_jsonl


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text())


@pytest.fixture(scope="module")
def client(server: FreightServer) -> Iterator[OpenAI]:
    c = server.client()
    yield c
    c.close()


def test_pause_priority_resume(tmp_path: Path, server: FreightServer, client: OpenAI) -> None:
    # 16 requests of 2 s on 8 slots: the batch cannot end before the pause lands (twice 2 s, against
    # 40 requests' ten times, which only made the test slow).
    path = write_jsonl(tmp_path / "in.jsonl", [request_line(f"q{i}", model=SCRIPTED_SLOW, sleep_s=2.0)
                                               for i in range(16)])
    r = freight("submit", path, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    batch_id = r.stdout.strip()
    r = freight("pause", batch_id, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0, r
    shown = rf"^{batch_id} (validating|in_progress): .*; priority 0, paused since \d{{4}}-"
    assert re.search(shown, r.stdout), r.stdout
    r = freight("priority", batch_id, "5", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0 and "priority 5, paused since" in r.stdout, r
    assert client.batches.retrieve(batch_id).to_dict()["freight"]["priority"] == 5
    r = freight("priority", batch_id, "5000", "--url", server.url, cwd=tmp_path)
    assert r.returncode == 2 and "-1000<=x<=1000" in r.stderr, r  # refused before it is sent
    r = freight("resume", batch_id, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 0 and "priority 5, not paused" in r.stdout, r
    done = wait_for(lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b, 60, "completed")
    assert done.request_counts.completed == 16
    r = freight("pause", "batch_" + "0" * 24, "--url", server.url, cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 404" in r.stderr, r
