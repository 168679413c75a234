"""``RayBackend``: a local model's ``Backend`` whose chunks run on Ray actors (``placement = "ray"``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from freight.backends.ray.placement import NAMESPACE, RayPlacement, weights_identity
from freight.backends.ray.pool import ReplicaPool, ReplicaSpec
from freight.domain.errors import ConfigError
from freight.domain.replicas import desired_replicas
from freight.domain.requests import Failure, Result
from freight.ports import Backend, ModelInfo

log = logging.getLogger(__name__)

#: Environment of a one-machine Ray started by freight (``address = "local"``): bind to 127.0.0.1
#: only (by default Ray listens on the machine's network address).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


#: How long the probe of a cluster's address waits for a connection.
PROBE_TIMEOUT_S = 5.0


def bootstrap_address(address: str) -> tuple[str, int] | None:
    """The (host, port) Ray connects to for ``address`` ("auto": the cluster this machine last started,
    as Ray finds it; "ray://host:port": the client server); None when there is none to check."""
    if address.startswith("ray://"):
        text: str | None = address.removeprefix("ray://").split("/", 1)[0]
    else:
        try:  # (Ray's own resolution: "auto" read from its temp dir, localhost as Ray rewrites it)
            from ray._private.services import canonicalize_bootstrap_address

            text = canonicalize_bootstrap_address(address)
        except Exception:  # (a private API that may move; an address Ray would refuse is its to report)
            text = None if address == "auto" else address
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class RayBackend:
    """Runs ``kind``'s backend (``local-embeddings``, ``llama-cpp``, ``vllm``) on ``replicas`` Ray actors.

    ``local`` is the same backend built in this process: it checks the options at start-up and says which
    models, endpoints, chunk size and per-replica concurrency to use; it never loads its model here.
    ``queue_depth(model)``: the model's queued requests in the store (None: the pool stays at ``min``).
    """

    def __init__(self, kind: str, model_id: str, options: dict[str, Any], local: Backend, placement: RayPlacement,
                 address: str | None = None, queue_depth: Callable[[str], int] | None = None) -> None:
        self.kind = kind
        self.model_id = model_id
        self.options = options
        self.local = local
        self.placement = placement
        self.address = address or "auto"
        self.queue_depth = queue_depth
        self.chunk_size = local.chunk_size
        #: Enough chunks to keep every replica busy at ``max`` replicas.
        self.max_concurrency = local.max_concurrency * placement.bounds.max
        self.pool: ReplicaPool | None = None
        self._scaler: asyncio.Task[None] | None = None
        #: This backend started a one-machine Ray (``address = "local"``): it stops it on ``close``.
        self._owns_ray = False

    def models(self) -> Sequence[ModelInfo]:
        return self.local.models()

    # ---- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> None:
        import os

        if self.address == "local":  # read by Ray when it is imported
            for key, value in LOCAL_RAY_ENV.items():
                os.environ.setdefault(key, value)
        import ray

        if ray.is_initialized():
            return
        if self.address != "local":
            self._probe()
        try:
            ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
            self._owns_ray = self.address == "local"
        except ConnectionError as exc:
            raise ConfigError(f"[models.\"{self.model_id}\"] is placed on Ray, but no Ray cluster was found at "
                              f"{self.address!r} ([ray] address, or RAY_ADDRESS; \"local\" starts one on this "
                              f"machine): {exc}") from None

    def _probe(self) -> None:
        """A ConfigError at once when nothing answers at the address Ray would connect to: ``ray.init`` keeps
        trying for many minutes there, on a thread that Ctrl-C cannot stop."""
        target = bootstrap_address(self.address)
        if target is None:
            return  # ("auto" with no cluster on this machine: ray.init says so at once)
        host, port = target
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise ConfigError(
                f"[models.\"{self.model_id}\"] is placed on Ray, but nothing answers at {host}:{port} (from "
                f"{self.address!r}: [ray] address, or RAY_ADDRESS): {exc.strerror or exc}. Start the cluster, or "
                "use \"local\" for a one-machine Ray; a head bound to 127.0.0.1 needs "
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in freight's environment too (docs/ray.md).") from None

    def _spec(self) -> ReplicaSpec:
        weights = weights_identity(self.kind, self.model_id, self.options)[:12]
        options = hashlib.sha256(json.dumps(self.options, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return ReplicaSpec(self.kind, self.model_id, self.options, f"{self.model_id}:{weights}:{options}",
                           self.placement, max(1, self.local.max_concurrency))

    async def start(self) -> None:
        """Connect to Ray, adopt the model's running replicas, start ``min`` of them, and the autoscaler."""
        if self.pool is None:
            await asyncio.to_thread(self._connect)
            self.pool = ReplicaPool(await asyncio.to_thread(self._spec))
        pool = self.pool
        loop = asyncio.get_running_loop()
        if self._scaler is None or self._scaler.done() or self._scaler.get_loop() is not loop:
            await pool.adopt()
            await pool.scale(max(pool.target, self.placement.bounds.min))
            if self.placement.bounds.min > 0:
                await pool.wait_ready(1, timeout_s=600)
            self._scaler = asyncio.create_task(self._autoscale())

    async def close(self) -> None:
        """Stop the autoscaler. The actors stay (detached): the next freight process finds them warm; but a
        one-machine Ray this backend started (``address = "local"``) ends here, and its actors with it."""
        scaler, self._scaler = self._scaler, None
        if scaler is not None and not scaler.done() and scaler.get_loop() is asyncio.get_running_loop():
            scaler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scaler
        if self._owns_ray:
            import ray

            # Explicitly: at interpreter exit Ray leaves its agent processes behind.
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False
            self.pool = None

    async def shutdown(self) -> None:
        """Stop every replica of this model (``freight`` never does this by itself)."""
        await self.close()
        if self.pool is not None:
            await self.pool.scale(0)
            for replica in list(self.pool.live.values()):
                await self.pool._kill(replica)
            self.pool.live.clear()

    async def _autoscale(self) -> None:
        """Every ``scale_interval_s``: the model's queue depth -> ``desired_replicas`` -> the pool."""
        pool, depth = self.pool, self.queue_depth
        assert pool is not None
        per_replica = max(1, self.chunk_size * pool.spec.chunks_per_replica)
        while True:
            await asyncio.sleep(self.placement.scale_interval_s)
            if depth is None:
                await pool.scale(pool.target)  # replaces lost replicas
                continue
            try:
                queued = await asyncio.to_thread(depth, self.model_id)
            except Exception:
                log.warning("reading the queue depth of %s failed", self.model_id, exc_info=True)
                continue
            wanted = desired_replicas(queued, pool.size(), self.placement.bounds, per_replica)
            if wanted != pool.target:
                log.info("model %s: %d queued, %d -> %d replicas", self.model_id, queued, pool.size(), wanted,
                         extra={"event": "ray_scale"})
            await pool.scale(wanted)

    # ---- execution ---------------------------------------------------------------------------

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        return await self.pool.execute(endpoint, bodies)
