"""LISTEN/NOTIFY as a wake-up hint: writes that make work send ``NOTIFY freight_work`` at commit
(freight/store/sql/postgres/batches.sql ``notify_work``); a listener thread with its own
connection calls back on each. Only a hint: a lost one costs a poll interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger("freight.store")

CHANNEL = "freight_work"


class Listener:
    def __init__(self, url: str, wake: Callable[[], None], *, retry_s: float = 2.0):
        self._url = url
        self._wake = wake
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freight-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._wake()
            except psycopg.Error as exc:
                log.warning("listening for work hints failed (%s); polling meanwhile", exc)
                time.sleep(self._retry_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
