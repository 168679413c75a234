"""``ModelReplica``: the Ray actor that holds one loaded copy of a local model.

The actor builds the same in-process backend freight would run itself (``freight.backends.build_backend``)
and forwards chunks to it. It is an async actor, so several chunks share the loaded model exactly as they
do in process (the llama.cpp decode loop batches them together; embeddings take turns on the model).
``ready`` loads the model once per actor process; ``info`` reports the process id and how many times this
process loaded the model, so that a restarted freight (and the tests) can tell a warm replica from a
fresh one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from freight.domain.requests import Failure, Result


class ModelLoadError(RuntimeError):
    """The replica could not build its backend or load its model (raised by ``ready`` inside the actor)."""


def _reserved_cpus() -> float | None:
    """The CPUs Ray reserved for this actor (``num_cpus``); None outside an actor."""
    import ray

    try:
        context: Any = ray.get_runtime_context()  # (Any: Ray leaves this method untyped)
        cpus = context.get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker
        return None
    return float(cpus) if cpus is not None else None


def fit_to_reserved_cores(backend: Any, cpus: float | None) -> None:
    """A backend that runs several model calls at once (``calls``: the embeddings backend, as many as the
    machine has cores) runs as many as the cores Ray reserved for this replica hold (at least one): two
    replicas with ``num_cpus = 1`` on a 2-core node then fill it, one call each, instead of two each."""
    if cpus is None or not hasattr(backend, "calls"):
        return
    threads = getattr(backend, "threads", None) or 1
    backend.calls = max(1, int(cpus) // threads)


class ModelReplica:
    """One replica: ``ready`` (load once), ``execute`` (one chunk), ``info``. Runs inside a Ray actor."""

    def __init__(self, kind: str, model_id: str, options: dict[str, Any]) -> None:
        from freight.backends import build_backend

        #: Why this node cannot build the backend (its engine is not installed here, say): ``ready`` says it.
        #: Not raised here: an actor whose constructor raises is indistinguishable from one that was killed.
        self._unusable: str | None = None
        try:
            self._backend = build_backend(model_id, {"backend": kind, **options})
        except Exception as exc:
            self._unusable = str(exc) or type(exc).__name__
        else:
            fit_to_reserved_cores(self._backend, _reserved_cpus())
        self._model_id = model_id
        self._loads = 0
        self._chunks = 0
        #: Seconds spent executing chunks (the model's side of a chunk's time, for bench/bench_ray.py).
        self._busy_s = 0.0
        self._loading: asyncio.Lock | None = None
        self._loaded = False
        #: Chunks running now (from every freight worker), and set once a worker retired this replica.
        self._running = 0
        self._retiring = False
        self._retiring_since = 0.0
        self._drained: asyncio.Event | None = None

    async def ready(self) -> dict[str, Any]:
        """Load the model unless this actor already holds it; then ``info()``."""
        if self._loading is None:
            self._loading = asyncio.Lock()
        if self._unusable is not None:
            raise ModelLoadError(self._unusable)
        async with self._loading:
            if not self._loaded:
                await self._backend.start()
                self._loaded = True
                self._loads += 1
        return await self.info()

    async def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "loads": self._loads, "chunks": self._chunks, "busy_s": self._busy_s,
                "model": self._model_id, "retiring": self._retiring, "calls": getattr(self._backend, "calls", None),
                "retiring_for_s": time.monotonic() - self._retiring_since if self._retiring else 0.0,
                "node_id": ray.get_runtime_context().get_node_id()}

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure] | None:
        """The chunk's results; None, having run nothing, once the replica is retiring (run it elsewhere)."""
        if self._retiring:
            return None
        self._running += 1
        try:
            if not self._loaded:
                await self.ready()
            self._chunks += 1
            started = time.perf_counter()
            try:
                return await self._backend.execute(endpoint, bodies)
            finally:
                self._busy_s += time.perf_counter() - started
        finally:
            self._running -= 1
            if self._running == 0 and self._drained is not None:
                self._drained.set()

    async def retire(self, grace_s: float = 0.0) -> int:
        """Take no new chunk; return once the chunks running (any worker's) have ended, and ``grace_s`` later
        (chunks sent meanwhile are answered None, so their workers learn to run them elsewhere): how many
        were running. The freight process that retired the replica kills it then."""
        if not self._retiring:
            self._retiring, self._retiring_since = True, time.monotonic()
        running = self._running
        if running:
            self._drained = self._drained or asyncio.Event()
            await self._drained.wait()
        await asyncio.sleep(grace_s)
        return running
