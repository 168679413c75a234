"""A webhook receiver on loopback for tests: records every POST (headers, body) and answers with
the statuses it is told to (then 200), or trickles its answer a byte at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    #: Answers for the first deliveries, in order; 200 once they are used up.
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Above 0: every answer is a 200 whose 60-byte body comes one byte every ``trickle_s`` seconds
    #: (each read is quick; the whole answer takes 60 × ``trickle_s``), until the sender hangs up.
    trickle_s: float = 0.0
    closing: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextmanager
def receiving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            if receiver.trickle_s > 0:
                self.trickle()
                return
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def trickle(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "60")
            self.end_headers()
            for _ in range(60):
                if receiver.closing.wait(receiver.trickle_s):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:  # the sender gave up
                    return

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 64  # (5 by default: a burst of 8 connections would wait out a SYN retry, 1 s)

    server = Server(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        server.shutdown()
        server.server_close()
