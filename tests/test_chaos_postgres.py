"""Chaos across processes on PostgreSQL, short (the driver is tests/chaos_postgres.py; ``make chaos``
runs a longer one), and idempotency keys across two API processes on one database."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from chaos_postgres import chaos_postgres
from servers import free_port, freight_command, jsonl_bytes, postgres_database, request_line, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_an_api_and_three_workers_survive_twenty_kills(tmp_path: Path) -> None:
    tally = chaos_postgres(20, workdir=tmp_path, n=120, deadline_s=60)
    print(tally.table())
    assert tally.kills >= 20
    assert tally.ok, tally.table()
    assert tally.batches >= 5 and tally.lines >= 500, tally.table()


def test_idempotency_keys_hold_across_two_api_processes(tmp_path: Path) -> None:
    with postgres_database("freight_idem") as url:
        env = subprocess_env()
        assert subprocess.run([*freight_command(), "migrate", "--database-url", url], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60).returncode == 0
        (tmp_path / "freight.toml").write_text('[models."freight-scripted"]\nbackend = "scripted"\n')
        procs, ports = [], [free_port(), free_port()]
        try:
            for i, port in enumerate(ports):
                with open(tmp_path / f"api-{i}.log", "ab") as log:
                    procs.append(subprocess.Popen(
                        [*freight_command(), "serve", "--no-worker", "--port", str(port), "--database-url", url,
                         "--data-dir", str(tmp_path / f"data-{i}"), "--blobs", str(tmp_path / "blobs"),
                         "--config", str(tmp_path / "freight.toml")],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path))
            clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}/v1", timeout=30) for p in ports]
            for c in clients:
                wait_for(lambda c=c: _up(c), 60, "an API process")
            body = jsonl_bytes([request_line("x-1")])

            def upload(c: httpx.Client) -> str:
                r = c.post("/files", files={"file": ("in.jsonl", body)}, data={"purpose": "batch"},
                           headers={"Idempotency-Key": "same-file"})
                assert r.status_code == 200, r.text
                return str(r.json()["id"])

            # The same key at once on both processes: one file.
            got: list[str] = []
            threads = [threading.Thread(target=lambda c=c: got.append(upload(c))) for c in clients * 2]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(got) == 4 and len(set(got)) == 1, got
            batch = {"input_file_id": got[0], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            ids = {c.post("/batches", json=batch, headers={"Idempotency-Key": "same-batch"}).json()["id"]
                   for c in clients}
            assert len(ids) == 1, ids
            listed = clients[1].get("/files").json()["data"]
            assert [f["id"] for f in listed] == got[:1]
            assert len(clients[0].get("/batches").json()["data"]) == 1
            other = clients[0].post("/batches", json=batch, headers={"Idempotency-Key": "another-batch"})
            assert other.json()["id"] not in ids, "another key is another batch"
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)


def _up(c: httpx.Client) -> bool:
    try:
        return c.get("/models").status_code == 200
    except httpx.HTTPError:
        return False
