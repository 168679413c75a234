"""A full disk (issue 10, item 7): deleting a file must work, free its bytes at once, and the engine's
log must not fill with one traceback per tick.

- ``DELETE /v1/files/{id}`` when the store cannot write for lack of space: the space held in reserve
  (``<data dir>/disk-reserve``) is given back and the delete goes through (it was a 507).
- The bytes of a deleted file go at once, or, while a batch still reads the file, at the first tick
  after that batch ends (they used to wait for the next housekeeping pass, a minute later).
- A claim that fails on every tick is logged once with its traceback, then counted, then "recovered".
- On a really full file system (a small tmpfs; needs root to mount it): uploads get 507, a delete
  still answers 200 and gives its bytes back, and the next upload fits again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_faults import MODEL, FaultyStore, World, chat, world  # noqa: F401 (the fixture)

from freight.domain.batches import BatchStatus
from freight.domain.clock import FixedClock
from freight.domain.errors import InsufficientStorage, NotFound
from freight.engine.repeats import RepeatedFailures
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

FULL = lambda: InsufficientStorage("database or disk is full", code="insufficient_storage")  # noqa: E731


def upload(files: FileService, data: bytes, purpose: str = "user_data") -> str:
    file_id, writer = files.new_upload()
    writer.write(data)
    return files.finish_upload("p", file_id, writer, filename="f.bin", purpose=purpose, expires_after_s=None).id


def deleted_state(store: SqliteStore, file_id: str) -> int:
    with sqlite3.connect(store.path) as c:
        return int(c.execute("SELECT deleted FROM files WHERE id=?", (file_id,)).fetchone()[0])


@pytest.fixture
def reserved(tmp_path: Path) -> Iterator[tuple[FaultyStore, LocalBlobStore, FileService]]:
    real = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    store = FaultyStore(real)
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False, reserve=tmp_path / "disk-reserve",
                           reserve_bytes=1 << 20)
    yield store, blobs, FileService(store, blobs, FixedClock())  # type: ignore[arg-type]
    real.close()


# ---- deletes on a full disk ------------------------------------------------------------------------

def test_the_reserve_is_held_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "disk-reserve"
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False, reserve=path, reserve_bytes=1 << 20)
    assert path.stat().st_size == 1 << 20 and path.stat().st_blocks * 512 >= 1 << 20, "allocated, not sparse"
    assert blobs.keys() == [], "the reserve is not a blob"
    assert blobs.release_reserve() and not path.exists()
    assert not blobs.release_reserve(), "nothing left to give back"
    assert blobs.restore_reserve() and path.stat().st_size == 1 << 20


def test_a_delete_when_the_store_is_full_uses_the_reserve(
        reserved: tuple[FaultyStore, LocalBlobStore, FileService], caplog: pytest.LogCaptureFixture) -> None:
    store, blobs, files = reserved
    file_id = upload(files, b"x" * 5000)
    key = store.inner.file_blob_key(file_id)
    assert key is not None and blobs.exists(key)
    store.fail = {"delete_file": {1}}
    store.error = FULL
    with caplog.at_level(logging.WARNING, logger="freight.files"):
        files.delete("p", file_id)  # it raised InsufficientStorage (a 507) before
    assert store.calls["delete_file"] == 2 and store.raised == 1
    assert any("released the space held in reserve" in r.getMessage() for r in caplog.records)
    with pytest.raises(NotFound):
        files.get("p", file_id)
    assert not blobs.exists(key), "its bytes are freed at once"
    assert deleted_state(store.inner, file_id) == 2, "a tombstone: the id is never reused"


def test_a_delete_with_no_reserve_left_is_still_a_507(
        reserved: tuple[FaultyStore, LocalBlobStore, FileService]) -> None:
    store, blobs, files = reserved
    file_id = upload(files, b"x" * 100)
    assert blobs.release_reserve()
    store.fail = {"delete_file": {1}}
    store.error = FULL
    with pytest.raises(InsufficientStorage):
        files.delete("p", file_id)
    assert files.get("p", file_id).id == file_id, "nothing was deleted"


def test_a_deleted_files_bytes_go_at_once(reserved: tuple[FaultyStore, LocalBlobStore, FileService]) -> None:
    store, blobs, files = reserved
    file_id = upload(files, b"y" * 3000)
    key = store.inner.file_blob_key(file_id)
    assert key is not None
    files.delete("p", file_id)
    assert not blobs.exists(key) and deleted_state(store.inner, file_id) == 2


def test_bytes_a_batch_still_reads_go_when_the_batch_ends(world: World) -> None:  # noqa: F811
    batch = world.submit([chat(i) for i in range(10)])
    key = world.real.file_blob_key(batch.input_file_id)
    assert key is not None
    world.files.delete("p", batch.input_file_id)
    assert world.blobs.exists(key), "the batch has not read its input yet: the bytes stay"

    done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED
    world.check(done, 10)
    # The fixed clock never reaches the next housekeeping pass: only the batch's end can purge.
    asyncio.run(world.engine.tick())
    assert not world.blobs.exists(key), "freed as soon as the batch ended"
    assert deleted_state(world.real, batch.input_file_id) == 2


# ---- the log on a full disk ----------------------------------------------------------------------------

def test_claims_failing_every_tick_are_logged_once_then_recovered(
        world: World, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    batch = world.submit([chat(i) for i in range(8)])
    world.store.fail = {"claim_runnable": set(range(1, 41))}
    world.store.error = FULL
    with caplog.at_level(logging.DEBUG, logger="freight.engine"):
        done = world.run_until_done(batch.id)
    assert done.status is BatchStatus.COMPLETED and world.store.raised == 40
    world.check(done, 8)
    claims = [r for r in caplog.records if "claim failed" in r.getMessage()]
    assert len(claims) == 2, [r.getMessage() for r in claims]  # it was 40 tracebacks
    first, recovered = claims
    assert first.exc_info is not None and first.levelno == logging.ERROR
    assert "recovered after 40 failure(s)" in recovered.getMessage() and recovered.exc_info is None
    assert first.event == "claim_failed" and recovered.recovered is True


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeating_failure_is_summarised_at_most_every_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Monotonic()
    repeats = RepeatedFailures(logging.getLogger("test.repeats"), every_s=60, monotonic=clock)
    with caplog.at_level(logging.DEBUG, logger="test.repeats"):
        for i in range(340):  # four a second for 85 s
            repeats.failed("claim_failed:m", "claim failed", OSError(28, f"No space left on device ({i})"))
            clock.now += 0.25
        repeats.ok("claim_failed:m")
        repeats.ok("claim_failed:m")  # nothing was failing any more: no line
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0] == ("ERROR", "claim failed", True)
    assert lines[1] == ("ERROR", "claim failed: repeated 240 times in the last 60 s (241 since it started 60 s ago); "
                        "last error: OSError: [Errno 28] No space left on device (240)", False)
    assert lines[2] == ("WARNING", "claim failed: recovered after 340 failure(s) over 85 s", False)


# ---- a really full file system --------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_really_full_disk(small_disk: Path) -> None:
    from starlette.testclient import TestClient

    from freight.api.app import create_app
    from freight.config import Settings
    from freight.runtime import build_runtime

    rt = build_runtime(Settings(data_dir=small_disk / "data", models={MODEL: {"backend": "scripted"}}), lock=False)
    reserve = small_disk / "data" / "disk-reserve"
    assert reserve.stat().st_size == 16 << 20
    data = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": chat(i)}).encode() + b"\n" for i in range(20_000))  # ~2.4 MB
    uploaded: list[str] = []
    try:
        with TestClient(create_app(rt, run_engine=False)) as client:
            def post() -> Any:
                return client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})

            while (response := post()).status_code == 200:
                uploaded.append(response.json()["id"])
                assert len(uploaded) < 40
            assert response.status_code == 507 and response.json()["error"]["code"] == "insufficient_storage"
            assert len(uploaded) >= 3
            # The store's checkpoint thread empties the WAL file once writes stop (store/sqlite/database.py):
            # wait for that, so that the delete below must grow it rather than reuse its pages.
            wal = small_disk / "data" / "freight.db-wal"
            deadline = time.monotonic() + 10
            while wal.exists() and wal.stat().st_size and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not wal.exists() or wal.stat().st_size == 0, "the WAL was never truncated"
            # Whatever room is left goes too: now the store cannot grow its log by a single page.
            with open(small_disk / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * 4096)
            assert free_bytes(small_disk) < 4096

            response = client.delete(f"/v1/files/{uploaded[0]}")
            assert response.status_code == 200, response.text  # it was a 507
            assert response.json() == {"id": uploaded[0], "object": "file", "deleted": True}
            assert not reserve.exists(), "the reserve was given back for the delete"
            assert free_bytes(small_disk) > 16 << 20, "the reserve's and the file's bytes are free at once"
            assert client.get(f"/v1/files/{uploaded[0]}").status_code == 404
            assert uploaded[0] not in {f["id"] for f in client.get("/v1/files").json()["data"]}

            for file_id in uploaded[1:]:  # more deletes on the same disk, with no reserve left
                assert client.delete(f"/v1/files/{file_id}").status_code == 200
            assert post().status_code == 200, "room again"
            (small_disk / "filler").unlink()
            assert rt.blobs.restore_reserve() and reserve.stat().st_size == 16 << 20
    finally:
        rt.close()
