"""One engine per data directory: an exclusive lock file, released when the process dies."""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from pathlib import Path

from freight.domain.errors import ConfigError


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.path = data_dir / "engine.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"the data directory {self.path.parent} is in use by another freight engine (pid {holder}); "
                "stop it or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def engine_id(self) -> str:
        """The lease owner of the engine that holds this lock: random, made once per data dir and
        kept in it, so a restarted engine knows its own leases (no other process has this id)."""
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
