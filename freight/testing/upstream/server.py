"""A small HTTP/1.1 server on asyncio streams (keep-alive, chunked request bodies, slow bodies, hangs and
dropped connections on purpose), for the upstream simulator. What it answers is ``dispatch``'s business.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from freight.testing.upstream.config import Counters


@dataclass
class Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    slow_s: float = 0.0
    #: Counted as this outcome for this request key once fully sent ("" : not counted).
    outcome: str = "ok"
    key: str = ""


HANG = object()
DROP = object()
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}



class HTTPServer(abc.ABC):
    """The asyncio server; runs on whatever loop calls ``start``. Subclasses implement ``dispatch``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.counters = Counters()
        #: Keep this many (time, key, outcome) events.
        self.max_events = 100_000
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @abc.abstractmethod
    async def dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> object:
        """A ``Reply``, ``HANG`` (never answer) or ``DROP`` (close without an answer)."""

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- HTTP/1.1 ----------------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                    return
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                with self.counters.lock:
                    self.counters.in_flight += 1
                    self.counters.max_in_flight = max(self.counters.max_in_flight, self.counters.in_flight)
                try:
                    reply = await self.dispatch(method, target.split("?", 1)[0], headers, body)
                    if reply is HANG:
                        # Never answer: wait until the client gives up and closes (or the server stops).
                        with contextlib.suppress(ConnectionError):
                            await reader.read(1)
                        return
                    if reply is DROP:
                        writer.transport.abort()
                        return
                    assert isinstance(reply, Reply)
                    if not await self._write(writer, reply, keep_alive):
                        return
                finally:
                    with self.counters.lock:
                        self.counters.in_flight -= 1
                if not keep_alive:
                    return
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(headers.get("content-length", "0") or 0)
        return await reader.readexactly(length) if length else b""

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> bool:
        status_line = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\n"
        headers = [("content-type", "application/json"), ("content-length", str(len(reply.body))),
                   *reply.headers]
        if not keep_alive:
            headers.append(("connection", "close"))
        head = (status_line + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
        key = reply.key
        try:
            if reply.slow_s > 0 and len(reply.body) > 1:
                writer.write(head)
                pieces = 5
                step = max(1, len(reply.body) // pieces)
                for start in range(0, len(reply.body), step):
                    writer.write(reply.body[start:start + step])
                    await writer.drain()
                    await asyncio.sleep(reply.slow_s / pieces)
            else:
                writer.write(head + reply.body)
                await writer.drain()
        except ConnectionError:
            if reply.outcome == "ok":
                self.counters.outcome(key, "aborted", self.max_events)
            return False
        if reply.outcome:
            self.counters.outcome(key, reply.outcome, self.max_events)
        return True
