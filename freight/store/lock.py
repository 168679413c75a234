"""Processes on one data directory: a lock file every freight process holds shared while it runs.

Several processes may use one data dir at once (``freight serve --no-worker`` beside ``freight
worker``s): SQLite in WAL mode with a busy timeout serialises their writes, and the batch steps run
in one process at a time through a lease in the store (``StepLeases``). What the lock still protects
is start-up clean-up that is only right when no other process is alive: returning every running
request to pending and removing blobs no file refers to. A process that finds the lock free takes it
exclusively, cleans up, then shares it; one that finds others there skips that clean-up (their
claims expire and are taken over instead). ``freight run`` keeps it exclusive: a local run is one
process, alone on its data dir. The lock is released when the process dies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import time
from pathlib import Path

from freight.domain.errors import ConfigError

log = logging.getLogger("freight.store")


class DataDirLock:
    def __init__(self, data_dir: Path, *, wait_s: float = 30.0):
        self.path = data_dir / "engine.lock"
        self._fd: int | None = None
        self._wait_s = wait_s

    def acquire(self, *, exclusive: bool = False) -> bool:
        """Join the processes on this data dir. True: this one is alone and holds the lock exclusively
        (call ``share`` when its start-up clean-up is done); False: others are running.
        ``exclusive``: be alone or fail at once."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            return True
        except BlockingIOError:
            if exclusive:
                os.close(fd)
                raise ConfigError(
                    f"the data directory {self.path.parent} is in use by another freight process; "
                    "stop it or use another --data-dir") from None
        # Others hold it: shared by running processes, or exclusively by one cleaning up as it starts.
        deadline = time.monotonic() + self._wait_s
        say_at: float | None = time.monotonic() + 0.5  # (a process starting up holds it for a moment)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self._fd = fd
                return False
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ConfigError(
                        f"the data directory {self.path.parent} is in use by a process that keeps it to itself "
                        "(freight run, or an older freight); stop it or use another --data-dir") from None
                if say_at is not None and time.monotonic() >= say_at:
                    log.warning("waiting for the data directory %s: another freight process keeps it to itself "
                                "(a freight run, or a process starting up); giving up in %.0f s",
                                self.path.parent, deadline - time.monotonic(), extra={"event": "data_dir_wait"})
                    say_at = None
                time.sleep(0.05)

    def share(self) -> None:
        """Let other processes join (after this one's start-up clean-up)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def engine_id(self) -> str:
        """The lease owner of an engine that started alone on this data dir: random, made once per
        data dir and kept in it, so a restarted engine knows its predecessor's leases (a process that
        starts beside a running one leases under an id of its own, so no two live ones share it)."""
        path = self.path.parent / "engine.id"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if not re.fullmatch(r"[0-9a-f]{32}", text):
            text = secrets.token_hex(16)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text + "\n")
            os.replace(tmp, path)
        return "engine-" + text
