"""Choosing the store: ``--database-url`` / FREIGHT_DATABASE_URL, ``freight migrate``, a
PostgreSQL database that is not migrated refused at start, and start-up taking back only the
leases of this data dir's engine, never another process's."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from servers import (
    config_text,
    free_port,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    postgres_database,
    request_line,
    subprocess_env,
)

from freight.config import load_settings
from freight.domain.errors import ConfigError
from freight.store import open_store
from freight.store.migrations import latest


def freight(*args: str | Path, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*freight_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def test_the_database_url_comes_from_the_flag_the_environment_or_the_config(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text('[server]\ndatabase_url = "postgresql://from-config/db"\ndatabase_pool_size = 3\n')
    assert load_settings(None, env={}).database_url is None
    got = load_settings(config, env={})
    assert (got.database_url, got.database_pool_size) == ("postgresql://from-config/db", 3)
    assert load_settings(config, env={"FREIGHT_DATABASE_URL": "postgresql://env/db"}).database_url == (
        "postgresql://env/db")
    assert load_settings(config, env={"FREIGHT_DATABASE_URL": "postgresql://env/db"},
                         database_url="postgresql://flag/db").database_url == "postgresql://flag/db"
    config.write_text("[server]\ndatabase_pool_size = 0\n")
    with pytest.raises(ConfigError, match="database_pool_size"):
        load_settings(config, env={})


def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        open_store("mysql://x/y", tmp_path)


def test_migrate_on_a_data_dir_makes_the_sqlite_schema_once(tmp_path: Path) -> None:
    first = freight("migrate", "--data-dir", tmp_path / "data", cwd=tmp_path)
    top = latest("sqlite")
    every = ", ".join(str(v) for v in range(1, top + 1))
    assert first.returncode == 0 and f"applied migration(s) {every}; schema version {top}" in first.stderr, first
    again = freight("migrate", "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert again.returncode == 0 and f"up to date (schema version {top})" in again.stderr, again
    assert (tmp_path / "data" / "freight.db").exists()


def test_a_database_that_does_not_answer_is_one_clear_line_at_once(tmp_path: Path) -> None:
    """Not a driver's exception class, nor a pool's 30 s of retries, each logged as a warning, first."""
    port = free_port()
    url = f"postgresql://someone:secret@127.0.0.1:{port}/nowhere"
    inputs = tmp_path / "in.jsonl"
    inputs.write_bytes(jsonl_bytes([request_line("a")]))
    for args in (("migrate",), ("run", inputs, "-o", tmp_path / "o.jsonl")):
        r = freight(*args, "--database-url", url, cwd=tmp_path)
        assert r.returncode == 1, r
        shown = " ".join(r.stderr.split())
        where = f"postgresql://127.0.0.1:{port}/nowhere"
        assert shown.startswith(f"error: cannot connect to {where}: connection failed:"), shown
        assert "Connection refused" in shown and "secret" not in shown and "WARNING" not in shown, shown
        assert "OperationalError" not in shown and "Traceback" not in shown, shown


@pytest.mark.postgres
def test_serve_refuses_an_unmigrated_database_then_migrate_and_run_work_on_it(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text())
    with postgres_database("freight_cli") as url:
        refused = freight("serve", "--port", "1", "--data-dir", tmp_path / "d", "--config", config,
                          "--database-url", url, cwd=tmp_path)
        assert refused.returncode == 1 and "no freight schema" in refused.stderr, refused
        assert "freight migrate --database-url postgresql://127.0.0.1:5432/freight_cli_" in refused.stderr
        first = freight("migrate", "--database-url", url, cwd=tmp_path)
        assert first.returncode == 0 and "applied migration(s) 1" in first.stderr, first
        assert "up to date" in freight("migrate", "--database-url", url, cwd=tmp_path).stderr
        env = {**subprocess_env(), "FREIGHT_DATABASE_URL": url}
        made = subprocess.run([*freight_command(), "keys", "create", "--project", "team", "--data-dir",
                               tmp_path / "k"], capture_output=True, text=True, env=env, timeout=60)
        assert made.returncode == 0, made
        from freight.store.postgres import PostgresStore

        shared = PostgresStore(url)
        assert [k.project for k in shared.list_api_keys()] == ["team"], "the key is in PostgreSQL"
        shared.close()
        lines = [request_line(f"r{i}") for i in range(5)]
        (tmp_path / "in.jsonl").write_bytes(jsonl_bytes(lines))
        out = tmp_path / "out.jsonl"
        done = freight("run", tmp_path / "in.jsonl", "-o", out, "--data-dir", tmp_path / "d", "--config", config,
                       "--database-url", url, cwd=tmp_path)
        assert done.returncode == 0, done
        assert [line["custom_id"] for line in parse_jsonl(out.read_bytes())] == [f"r{i}" for i in range(5)]


@pytest.mark.postgres
def test_start_up_on_a_shared_store_leaves_other_processes_leases_alone(tmp_path: Path) -> None:
    from freight.domain.batches import Batch, BatchStatus
    from freight.ports import NewRequest
    from freight.runtime import build_runtime
    from freight.store.postgres.migrate import migrate

    with postgres_database("freight_leases") as url:
        migrate(url)
        other = open_store(url, tmp_path)
        b = Batch(id="batch_" + "a" * 24, project="p", endpoint="/v1/embeddings", input_file_id="f",
                  completion_window="24h", status=BatchStatus.VALIDATING, created_at=1, expires_at=2**40)
        other.insert_batch(b, None)
        other.insert_requests(b.id, [NewRequest(i, i + 1, f"c{i}", b"{}") for i in range(3)])
        other.start_batch(b.id, 3, "m", 1)
        assert len(other.claim(b.id, "a-live-worker", time.time(), 600, 3, 5)) == 3
        settings = load_settings(None, data_dir=tmp_path / "data", env={}, database_url=url)
        runtime = build_runtime(settings, backends=[])
        try:
            assert runtime.store.open_counts(b.id) == (0, 3), "still running under the live worker's leases"
            assert runtime.store.release_leases("a-live-worker") == 3
            assert len(runtime.store.claim(b.id, runtime.engine.owner, time.time(), 600, 2, 5)) == 2
        finally:
            runtime.close()
        runtime = build_runtime(settings, backends=[])  # the same data dir's engine, restarted
        try:
            assert runtime.store.open_counts(b.id) == (3, 0), "its own leases were taken back at start"
        finally:
            runtime.close()
            other.close()


def test_the_engine_id_of_a_data_dir_is_kept_across_restarts(tmp_path: Path) -> None:
    from freight.store.lock import DataDirLock

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = DataDirLock(tmp_path / "a").engine_id()
    assert re.fullmatch(r"engine-[0-9a-f]{32}", first)
    assert DataDirLock(tmp_path / "a").engine_id() == first
    assert DataDirLock(tmp_path / "b").engine_id() != first


def test_blobs_that_cannot_be_a_directory_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    r = freight("worker", "--blobs", tmp_path / "a-file" / "blobs", "--data-dir", tmp_path / "d", cwd=tmp_path)
    assert r.returncode == 1, r
    shown = " ".join(r.stderr.split())
    assert f"error: --blobs {tmp_path / 'a-file' / 'blobs'}: cannot keep files there: Not a directory" in shown, shown
    assert "NotADirectoryError" not in shown and "Traceback" not in shown, shown
