"""The composition root (freight/runtime.py) and the data dir's lock: what every process builds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from servers import freight_command, jsonl_bytes, request_line, subprocess_env

from freight.config import Settings
from freight.domain.errors import ConfigError
from freight.runtime import build_catalog, build_runtime
from freight.store.blobs import LocalBlobStore
from freight.store.lock import DataDirLock

KEYED = """\
[models."remote-gpt"]
backend = "openai"
base_url = "https://api.example.invalid/v1"
api_key_env = "FREIGHT_TEST_KEY_THAT_IS_NOT_SET"

[models."lane-gpt"]
backend = "openai-batch"
base_url = "https://api.example.invalid/v1"
api_key_env = "FREIGHT_TEST_KEY_THAT_IS_NOT_SET"
"""


def test_validate_is_offline_and_needs_no_api_key(tmp_path: Path) -> None:
    (tmp_path / "freight.toml").write_text(KEYED)
    lines = [request_line(f"r{i}", model="remote-gpt") for i in range(3)]
    (tmp_path / "in.jsonl").write_bytes(jsonl_bytes(lines))
    done = subprocess.run([*freight_command(), "validate", "in.jsonl", "--config", "freight.toml"], cwd=tmp_path,
                          capture_output=True, text=True, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done
    assert "ok: 3 requests for remote-gpt" in done.stdout


def test_an_offline_catalog_knows_keyed_models_but_serving_them_needs_the_key(tmp_path: Path) -> None:
    tables = {"remote-gpt": {"backend": "openai", "base_url": "https://x.invalid/v1",
                             "api_key_env": "FREIGHT_TEST_KEY_THAT_IS_NOT_SET"}}
    settings = Settings(data_dir=tmp_path, models=tables)
    assert build_catalog(settings, offline=True).check("remote-gpt", "/v1/chat/completions") is None
    with pytest.raises(ConfigError, match="FREIGHT_TEST_KEY_THAT_IS_NOT_SET"):
        build_catalog(settings)


def test_several_processes_share_a_data_dir_and_only_one_alone_cleans_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = DataDirLock(tmp_path), DataDirLock(tmp_path, wait_s=0.8)
    assert first.acquire() is True, "alone: may return leases and sweep orphan blobs"
    with pytest.raises(ConfigError, match="keeps it to itself"):
        second.acquire()  # the first is still cleaning up (exclusive)
    said = [r.getMessage() for r in caplog.records if r.name == "freight.store"]
    assert len(said) == 1 and said[0].startswith(f"waiting for the data directory {tmp_path}:"), \
        "a process that waits says so at once, not only when it gives up"
    first.share()
    assert second.acquire() is False, "not alone: must leave the others' work alone"
    first.release()
    second.release()
    third = DataDirLock(tmp_path)
    assert third.acquire(exclusive=True) is True
    with pytest.raises(ConfigError, match="in use by another freight process"):
        DataDirLock(tmp_path).acquire(exclusive=True)
    third.release()


def test_two_runtimes_on_one_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models={"freight-scripted": {"backend": "scripted"}})
    one = build_runtime(settings)
    try:
        two = build_runtime(settings)
        assert one.engine.steps.leases is one.store and two.engine.steps.leases is two.store
        two.close()
    finally:
        one.close()


def test_blobs_in_a_shared_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models={"freight-scripted": {"backend": "scripted"}},
                        blobs=str(tmp_path / "shared"))
    runtime = build_runtime(settings)
    try:
        assert isinstance(runtime.blobs, LocalBlobStore) and runtime.blobs.root == tmp_path / "shared"
        assert runtime.message_batches is not None
    finally:
        runtime.close()


def test_a_shared_blob_directory_keeps_other_hosts_uploads_in_flight(tmp_path: Path) -> None:
    import os

    from freight.store import blobs as local

    shared = tmp_path / "shared"
    store = LocalBlobStore(shared)
    w = store.writer("file-mine")
    w.write(b"x")
    mine_dead = shared / f"file-a.tmp999999999@{local.HOST}"
    legacy_dead = shared / "file-b.tmp999999999"
    other_host = shared / "file-c.tmp12@elsewhere"
    other_host_old = shared / "file-d.tmp12@elsewhere"
    for p in (mine_dead, legacy_dead, other_host, other_host_old):
        p.write_bytes(b"half")
    old = os.stat(other_host_old).st_mtime - local.FOREIGN_TMP_AGE_S - 1
    os.utime(other_host_old, (old, old))
    store.sweep_temporaries()
    left = sorted(p.name for p in shared.iterdir())
    assert left == sorted([other_host.name, f"file-mine.tmp{os.getpid()}@{local.HOST}"]), left
    assert w.commit() == 1 and store.keys() == ["file-mine"]


def test_a_process_alone_on_its_data_dir_frees_a_dead_processs_step_lease(tmp_path: Path) -> None:
    from freight.engine.step_lease import BATCH_STEPS

    settings = Settings(data_dir=tmp_path / "data", models={"freight-scripted": {"backend": "scripted"}})
    first = build_runtime(settings)
    assert first.store.acquire_lease(BATCH_STEPS, "dead-process", first.clock.now(), first.clock.now() + 600)
    first.close()  # as if killed: the lease stays in the store
    again = build_runtime(settings)
    try:
        assert again.store.lease_holder(BATCH_STEPS, again.clock.now()) is None, "restart is not held up"
        assert again.store.acquire_lease(BATCH_STEPS, "live", again.clock.now(), again.clock.now() + 600)
        other = build_runtime(settings)  # not alone: a live process's lease stays
        try:
            assert other.store.lease_holder(BATCH_STEPS, other.clock.now()) == "live"
        finally:
            other.close()
    finally:
        again.close()
