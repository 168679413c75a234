"""Running the simulator: ``Upstream``, a context manager (a thread of this process or a child process),
and the CLI ``python -m freight.testing.upstream``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import subprocess as _subprocess
import sys
import threading
from typing import Any
from urllib.request import Request, urlopen

from freight.testing.upstream.behaviour import UpstreamServer
from freight.testing.upstream.config import UpstreamConfig, UpstreamStats


class Upstream:
    """``with Upstream(config) as up:`` a simulator on 127.0.0.1 at ``up.base_url`` (ends in ``/v1``).

    In a thread of this process by default; ``subprocess=True`` runs ``python -m freight.testing.upstream``.
    """

    def __init__(self, config: UpstreamConfig | None = None, *, port: int = 0, subprocess: bool = False):
        self.config = config or UpstreamConfig()
        self.port = port
        self.use_subprocess = subprocess
        self._server: UpstreamServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proc: _subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> Upstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.use_subprocess:
            cmd = [sys.executable, "-m", "freight.testing.upstream", "--port", str(self.port),
                   "--config-json", json.dumps(dataclasses.asdict(self.config))]
            self._proc = _subprocess.Popen(cmd, stdout=_subprocess.PIPE, stdin=_subprocess.DEVNULL)
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the upstream simulator did not start (exit {self._proc.wait()})")
            self.port = int(json.loads(line)["port"])
            return
        server = self._server = UpstreamServer(self.config, port=self.port)
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="freight-upstream-sim", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the upstream simulator did not start")
        self.port = server.port

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except _subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._loop is not None and self._server is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    # ---- control ---------------------------------------------------------------------------------------------------
    def _call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        with urlopen(request, timeout=30) as response:  # loopback only
            return json.loads(response.read())

    def stats(self) -> UpstreamStats:
        if self._server is not None:
            return self._server.counters.snapshot()
        return UpstreamStats.from_json(self._call("/_sim/stats"))

    def reset_stats(self) -> None:
        if self._server is not None:
            with self._server.counters.lock:
                self._server.counters.reset()
            return
        self._call("/_sim/reset", {})

    def configure(self, **changes: Any) -> None:
        """Change the behaviour while running (e.g. ``up.configure(error_rate=0)``)."""
        self.config = self.config.replace(**changes)
        if self._server is not None and self._loop is not None:
            server = self._server
            config = self.config

            async def apply() -> None:
                server.configure(config)

            asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)
            return
        self._call("/_sim/config", changes)


def main(argv: list[str] | None = None) -> None:
    from freight.testing import upstream as package  # its docstring is the help (imported here: it imports us)

    parser = argparse.ArgumentParser(prog="python -m freight.testing.upstream", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one; printed)")
    parser.add_argument("--config-json", default=None, help="an UpstreamConfig as JSON (flags below override)")
    for f in dataclasses.fields(UpstreamConfig):
        if f.type in ("int | None", "float", "int", "str", "bool", "str | None"):
            kind: Any = {"int | None": int, "int": int, "float": float, "str": str, "str | None": str}.get(str(f.type))
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(flag, dest=f.name, action="store_true", default=None)
            else:
                parser.add_argument(flag, dest=f.name, type=kind, default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    for f in dataclasses.fields(UpstreamConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    config = UpstreamConfig(**values)

    async def serve() -> None:
        server = UpstreamServer(config, port=args.port)
        port = await server.start()
        print(json.dumps({"port": port, "base_url": f"http://127.0.0.1:{port}/v1"}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
